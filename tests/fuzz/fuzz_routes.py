"""Bodies for every POST route, derived from the fields each route reads (lms/api/*.py and
lms/inference/*: tools, response formats, sampling): a valid body, valid variants of its
optional fields, and the places where a mutation puts a hostile value.

A case is a valid body with zero to three mutations (a field set to a hostile value, a field
removed, an unknown field added, a nested part of messages/tools/schemas replaced), or, now and
then, a whole body that is not a JSON object at all.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

import fuzz_hostile as h
from fuzz_daemon import MODEL
from fuzz_rawjson import Raw, encode
from hypothesis import strategies as st

St = st.SearchStrategy[Any]
Path = tuple[str | int, ...]

# --- valid values ---------------------------------------------------------------------------

small_tokens = st.integers(min_value=1, max_value=4)
temperature = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
penalty = st.floats(min_value=-2.0, max_value=2.0, allow_nan=False)
stop = st.one_of(
    st.text(min_size=1, max_size=5), st.lists(st.text(min_size=1, max_size=5), max_size=4)
)
words = st.sampled_from(["Hello", "Say hi", "2 + 2 =", "Name a colour.", "héllo wörld", "日本語"])

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}},
    "required": ["city"],
}
OPENAI_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather of a city.", "parameters": SCHEMA},
}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city.",
    "input_schema": SCHEMA,
}

SAMPLING: dict[str, St] = {
    "temperature": temperature,
    "top_p": unit,
    "top_k": st.integers(min_value=0, max_value=100),
    "min_p": unit,
    "repeat_penalty": st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
    "presence_penalty": penalty,
    "frequency_penalty": penalty,
    "seed": st.integers(min_value=0, max_value=2**31),
    "stop": stop,
    "cache_prompt": st.booleans(),
    "stream": st.booleans(),
    "ttl": st.integers(min_value=60, max_value=3600),
}

chat_messages = st.one_of(
    words.map(lambda w: [{"role": "user", "content": w}]),
    words.map(
        lambda w: [{"role": "system", "content": "Be brief."}, {"role": "user", "content": w}]
    ),
    words.map(lambda w: [{"role": "user", "content": [{"type": "text", "text": w}]}]),
)


@dataclass(frozen=True)
class Route:
    path: str
    base: dict[str, Any]
    optional: dict[str, St]
    #: Nested places a mutation may replace (the parents are created from a valid variant).
    nested: list[Path] = field(default_factory=list)
    #: Places where a pathological JSON schema goes.
    schema_places: list[tuple[str, Any]] = field(default_factory=list)


ROUTES: dict[str, Route] = {
    r.path: r
    for r in [
        Route(
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 2},
            {
                **SAMPLING,
                "messages": chat_messages,
                "max_completion_tokens": small_tokens,
                "stream_options": st.just({"include_usage": True}),
                "tools": st.just([OPENAI_TOOL]),
                "tool_choice": st.sampled_from(
                    [
                        "auto",
                        "none",
                        "required",
                        {"type": "function", "function": {"name": "get_weather"}},
                    ]
                ),
                "parallel_tool_calls": st.booleans(),
                "response_format": st.sampled_from(
                    [
                        {"type": "text"},
                        {"type": "json_object"},
                        {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
                    ]
                ),
            },
            nested=[
                ("messages", 0),
                ("messages", 0, "role"),
                ("messages", 0, "content"),
                ("messages", 0, "content", 0, "text"),
                ("messages", 0, "content", 0, "type"),
                ("messages", 0, "tool_calls"),
                ("tools", 0),
                ("tools", 0, "function"),
                ("tools", 0, "function", "name"),
                ("tools", 0, "function", "parameters"),
                ("tool_choice", "function", "name"),
                ("response_format", "type"),
                ("response_format", "json_schema"),
                ("response_format", "json_schema", "name"),
                ("stream_options", "include_usage"),
            ],
            schema_places=[
                (
                    "tools",
                    lambda s: [{"type": "function", "function": {"name": "f", "parameters": s}}],
                ),
                (
                    "response_format",
                    lambda s: {"type": "json_schema", "json_schema": {"name": "s", "schema": s}},
                ),
            ],
        ),
        Route(
            "/v1/completions",
            {"model": MODEL, "prompt": "Hello", "max_tokens": 2},
            {
                **SAMPLING,
                "prompt": st.one_of(words, words.map(lambda w: [w])),
                "max_tokens": small_tokens,
                "stream_options": st.just({"include_usage": True}),
            },
            nested=[("prompt", 0), ("stream_options", "include_usage")],
        ),
        Route(
            "/v1/embeddings",
            {"model": MODEL, "input": "hello"},
            {
                "input": st.one_of(
                    words,
                    st.lists(words, min_size=1, max_size=3),
                    st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=5),
                ),
                "encoding_format": st.sampled_from(["float", "base64"]),
                "user": words,
                "ttl": SAMPLING["ttl"],
            },
            nested=[("input", 0), ("input", 0, 0)],
        ),
        Route(
            "/v1/responses",
            {"model": MODEL, "input": "Say hi", "max_output_tokens": 2},
            {
                **SAMPLING,
                "input": st.one_of(words, words.map(lambda w: [{"role": "user", "content": w}])),
                "instructions": words,
                "store": st.booleans(),
                "max_output_tokens": small_tokens,
                "text": st.just({"format": {"type": "text"}}),
                "tools": st.just(
                    [{"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:9/mcp"}]
                ),
                "previous_response_id": st.just("resp_0123456789abcdef"),
            },
            nested=[
                ("input", 0),
                ("input", 0, "content"),
                ("input", 0, "role"),
                ("text", "format"),
                ("tools", 0),
                ("tools", 0, "server_url"),
                ("tools", 0, "headers"),
            ],
            schema_places=[
                ("text", lambda s: {"format": {"type": "json_schema", "name": "s", "schema": s}})
            ],
        ),
        Route(
            "/v1/messages",
            {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Say hi"}]},
            {
                "messages": chat_messages.filter(lambda m: m[0]["role"] == "user"),
                "system": st.one_of(words, st.just([{"type": "text", "text": "Be brief."}])),
                "stop_sequences": st.lists(st.text(min_size=1, max_size=5), max_size=3),
                "temperature": unit,
                "top_p": unit,
                "top_k": st.integers(min_value=0, max_value=100),
                "stream": st.booleans(),
                "tools": st.just([ANTHROPIC_TOOL]),
                "tool_choice": st.sampled_from(
                    [{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "get_weather"}]
                ),
                "cache_prompt": st.booleans(),
                "metadata": st.just({"user_id": "u"}),
                "ttl": SAMPLING["ttl"],
            },
            nested=[
                ("messages", 0),
                ("messages", 0, "role"),
                ("messages", 0, "content"),
                ("messages", 0, "content", 0, "type"),
                ("tools", 0),
                ("tools", 0, "input_schema"),
                ("tool_choice", "type"),
                ("tool_choice", "name"),
                ("system", 0, "text"),
            ],
            schema_places=[("tools", lambda s: [{"name": "f", "input_schema": s}])],
        ),
        Route(
            "/v1/messages/count_tokens",
            {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}]},
            {
                "messages": chat_messages.filter(lambda m: m[0]["role"] == "user"),
                "system": words,
                "tools": st.just([ANTHROPIC_TOOL]),
                "tool_choice": st.just({"type": "auto"}),
                "max_tokens": small_tokens,
            },
            nested=[("messages", 0), ("messages", 0, "content"), ("tools", 0, "input_schema")],
            schema_places=[("tools", lambda s: [{"name": "f", "input_schema": s}])],
        ),
        Route(
            "/api/v1/chat",
            {"model": MODEL, "input": "Say hi", "max_output_tokens": 2},
            {
                **SAMPLING,
                "input": st.one_of(words, words.map(lambda w: [{"type": "text", "content": w}])),
                "system_prompt": words,
                "reasoning": st.just("off"),
                "store": st.booleans(),
                "max_output_tokens": small_tokens,
                "tool_choice": st.sampled_from(["auto", "required"]),
                "integrations": st.sampled_from(
                    [
                        ["mcp/none"],
                        [
                            {
                                "type": "ephemeral_mcp",
                                "server_label": "x",
                                "server_url": "http://127.0.0.1:9/mcp",
                            }
                        ],
                    ]
                ),
                "previous_response_id": st.just("resp_0123456789abcdef"),
            },
            nested=[
                ("input", 0),
                ("input", 0, "type"),
                ("input", 0, "content"),
                ("integrations", 0),
                ("integrations", 0, "server_url"),
                ("integrations", 0, "allowed_tools"),
                ("integrations", 0, "headers"),
            ],
        ),
        Route(
            "/api/v1/models/load",
            {"model": MODEL, "context_length": 256, "identifier": "fuzz-load"},
            {
                "ttl": st.integers(min_value=60, max_value=3600),
                "echo_load_config": st.booleans(),
                "parallel": st.integers(min_value=1, max_value=2),
                "flash_attention": st.booleans(),
                "eval_batch_size": st.integers(min_value=1, max_value=512),
                "num_experts": st.integers(min_value=1, max_value=4),
                "offload_kv_cache_to_gpu": st.booleans(),
            },
        ),
        Route(
            "/api/v1/models/unload",
            {"instance_id": "fuzz-not-loaded"},
            {},
        ),
        Route(
            "/api/v1/models/download",
            {"model": "http://127.0.0.1:9/fuzz/model.gguf"},
            {
                "sha256": st.just("0" * 64),
                "size": st.integers(min_value=1, max_value=10**6),
                "publisher": st.just("fuzz"),
                "name": st.just("model"),
                "url": st.just("http://127.0.0.1:9/fuzz/model.gguf"),
            },
        ),
    ]
}

#: The model loads (a real load of a 270M model is about a second) never take the shared one.
LOAD_TTL_FIELDS = ("context_length",)


def _set(body: dict[str, Any], path: Path, value: Any) -> None:
    """Put ``value`` at ``path``, making the parents (a list index past the end appends)."""
    node: Any = body
    for step, following in itertools.pairwise(path):
        nxt_default: Any = [] if isinstance(following, int) else {}
        if isinstance(node, dict):
            if not isinstance(node.get(step), (dict, list)) or (
                isinstance(following, int) != isinstance(node.get(step), list)
            ):
                node[step] = nxt_default
            node = node[step]
        else:
            assert isinstance(step, int)
            while len(node) <= step:
                node.append(copy.deepcopy(nxt_default))
            if not isinstance(node[step], (dict, list)):
                node[step] = nxt_default
            node = node[step]
    last = path[-1]
    if isinstance(node, dict):
        node[last] = value
    else:
        assert isinstance(last, int)
        while len(node) <= last:
            node.append(None)
        node[last] = value


_UNKNOWN_FIELDS = st.one_of(
    st.sampled_from(
        [
            "__proto__",
            "constructor",
            "",
            "\x00",
            "model ",
            "MODEL",
            "n",
            "logprobs",
            "logit_bias",
            "user",
            "functions",
            "n_ctx",
            "grammar",
            "json_schema",
            "echo",
            "suffix",
        ]
    ),
    st.text(max_size=10),
    h.surrogate,
)


@st.composite
def case(draw: st.DrawFn, route: Route) -> tuple[bytes, str]:
    """One body for ``route``: (the bytes sent, a readable form for reports)."""
    whole = draw(st.integers(min_value=0, max_value=19))
    if whole == 0:  # now and then, a body that is not the route's object at all
        value = draw(
            st.one_of(h.hostile, st.sampled_from([Raw(""), Raw(" "), Raw("null"), Raw("[]")]))
        )
        text = encode(value)
        raw = draw(st.sampled_from(["utf-8", "latin-1-bytes", "bom"]))
        if raw == "latin-1-bytes":
            data = text.encode("utf-8", "surrogatepass") + b"\xff\xfe\x80"
        elif raw == "bom":
            data = b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
        else:
            data = text.encode("utf-8", "surrogatepass")
        return data, f"{raw} body {h.as_text(value)}"
    body = copy.deepcopy(route.base)
    for name in (
        draw(st.lists(st.sampled_from(sorted(route.optional)), max_size=4, unique=True))
        if route.optional
        else []
    ):
        body[name] = draw(route.optional[name])
    if route.path == "/api/v1/models/load":
        body["identifier"] = "fuzz-load"
    # Mostly one to three mutations; one case in ten is the valid body (the baseline).
    mutations = 0 if draw(st.integers(min_value=0, max_value=9)) == 0 else draw(st.integers(1, 3))
    notes: list[str] = []
    fields = sorted({*route.base, *route.optional})
    for _ in range(mutations):
        kind = draw(
            st.sampled_from(
                ["field", "field", "field", "remove", "unknown", "nested", "schema", "grammar"]
            )
        )
        if kind == "nested" and not route.nested:
            kind = "field"
        if kind == "schema" and not route.schema_places:
            kind = "field"
        if kind == "field":
            name = draw(st.sampled_from(fields))
            body[name] = draw(h.hostile)
        elif kind == "remove":
            names = sorted(k for k in body if isinstance(k, str))  # not the Raw keys
            if names:
                name = draw(st.sampled_from(names))
                body.pop(name, None)
                notes.append(f"without {name}")
        elif kind == "unknown":
            key = draw(_UNKNOWN_FIELDS)
            body[key] = draw(h.hostile)
        elif kind == "nested":
            path = draw(st.sampled_from(route.nested))
            top = path[0]
            assert isinstance(top, str)
            if top in route.optional and (
                top not in body or not isinstance(body[top], (dict, list))
            ):
                body[top] = copy.deepcopy(draw(route.optional[top]))
            try:
                _set(body, path, draw(h.hostile))
            except (AssertionError, TypeError):
                body[top] = draw(h.hostile)
        elif kind == "schema":
            name, wrap = draw(st.sampled_from(route.schema_places))
            body[name] = wrap(draw(h.json_schema))
            if name == "tools" and route.path == "/v1/chat/completions" and draw(st.booleans()):
                body["tool_choice"] = "required"
        else:  # grammar-ish text where a route takes text: the generic fields get it
            name = draw(st.sampled_from(fields))
            body[name] = draw(h.gbnf)
    shown = h.as_text(body)
    if notes:
        shown += " (" + ", ".join(notes) + ")"
    return encode(body).encode("utf-8", "surrogatepass"), shown
