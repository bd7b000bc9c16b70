"""Frames for every SDK endpoint (lms/api/sdk/*, the table lms.auth.permissions.SDK_ACCESS):
a valid ``rpcCall``/``channelCreate`` per endpoint with parameters as the lmstudio SDK sends
them, mutated like the HTTP bodies (fuzz_routes.py), plus frames of other types and hostile auth
packets."""

from __future__ import annotations

import copy
from typing import Any

import fuzz_hostile as h
from fuzz_daemon import MODEL
from fuzz_rawjson import Raw, encode
from fuzz_routes import Route, case
from hypothesis import strategies as st

SPEC = {"type": "query", "query": {"identifier": MODEL}}
HISTORY = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}]}


def prediction_stack(max_tokens: int = 4) -> dict[str, Any]:
    fields = [
        {
            "key": "llm.prediction.maxPredictedTokens",
            "value": {"checked": True, "value": max_tokens},
        },
        {"key": "llm.prediction.temperature", "value": 0.0},
    ]
    return {"layers": [{"layerName": "apiOverride", "config": {"fields": fields}}]}


_FIELD = ("predictionConfigStack", "layers", 0, "config", "fields")
#: Extra prediction fields a mutation may add (index 2 of the layer's fields).
_EXTRA_FIELDS = [
    "llm.prediction.structured",
    "llm.prediction.tools",
    "llm.prediction.promptTemplate",
    "llm.prediction.stopStrings",
    "llm.prediction.topKSampling",
    "llm.prediction.topPSampling",
    "llm.prediction.minPSampling",
    "llm.prediction.repeatPenalty",
    "llm.prediction.unknownKey",
]

_TEMPLATES = [
    "{% for x in range(100000000) %}{{ x }}{% endfor %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ 'a' * 1000000000 }}",
    "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    "{{",
    "{% if %}",
    "{{ raise_exception('boom') }}",
    "{{ messages[999] }}",
    "",
]

structured = st.one_of(
    h.gbnf.map(lambda g: {"type": "gbnf", "gbnfGrammar": g}),
    h.json_schema.map(lambda s: {"type": "json", "jsonSchema": s}),
    h.hostile,
)
prompt_template = st.one_of(
    st.sampled_from(_TEMPLATES).map(
        lambda t: {
            "type": "jinja",
            "stopStrings": [],
            "jinjaPromptTemplate": {"template": t, "bosToken": "", "eosToken": ""},
        }
    ),
    h.hostile,
)
extra_field = st.tuples(st.sampled_from(_EXTRA_FIELDS), st.integers(0, 2)).flatmap(
    lambda pair: (
        structured
        if pair[0].endswith("structured")
        else prompt_template
        if pair[0].endswith("promptTemplate")
        else h.hostile
    ).map(lambda value, key=pair[0]: {"key": key, "value": value})
)


def _rpc(namespace: str, endpoint: str, parameter: Any, nested: list[tuple[Any, ...]]) -> Route:
    base: dict[str, Any] = {"type": "rpcCall", "endpoint": endpoint, "callId": 1}
    if parameter is not None:
        base["parameter"] = parameter
    paths = [("parameter", *p) for p in nested]
    return Route(f"/{namespace}:{endpoint}", base, {}, nested=paths)


def _channel(namespace: str, endpoint: str, parameter: Any, nested: list[tuple[Any, ...]]) -> Route:
    base = {
        "type": "channelCreate",
        "endpoint": endpoint,
        "channelId": 1,
        "creationParameter": parameter,
    }
    paths = [("creationParameter", *p) for p in nested]
    return Route(f"/{namespace}:{endpoint}", base, {}, nested=paths)


_SPEC_PATHS: list[tuple[Any, ...]] = [
    ("specifier",),
    ("specifier", "type"),
    ("specifier", "query"),
    ("specifier", "query", "identifier"),
    ("specifier", "query", "path"),
    ("specifier", "query", "vision"),
    ("specifier", "instanceReference"),
]


def _model_endpoints(namespace: str) -> list[Route]:
    spec = {"specifier": SPEC}
    text = {"specifier": SPEC, "inputString": "hello"}
    load_stack = ("loadConfigStack", "layers", 0, "config", "fields", 0, "value")
    return [
        _rpc(namespace, "listLoaded", None, []),
        _rpc(
            namespace,
            "getModelInfo",
            {**spec, "throwIfNotFound": True},
            [*_SPEC_PATHS, ("throwIfNotFound",)],
        ),
        _rpc(namespace, "getLoadConfig", spec, _SPEC_PATHS),
        _channel(
            namespace,
            "getOrLoad",
            {"identifier": MODEL},
            [("identifier",), ("loadTtlMs",), ("loadConfigStack",), load_stack],
        ),
        _rpc(namespace, "tokenize", text, [*_SPEC_PATHS, ("inputString",)]),
        _rpc(namespace, "countTokens", text, [*_SPEC_PATHS, ("inputString",)]),
        _channel(
            namespace,
            "loadModel",
            {"modelKey": MODEL, "identifier": "fuzz-sdk", "loadConfigStack": {"layers": []}},
            [
                ("modelKey",),
                ("identifier",),
                ("ttlMs",),
                ("loadConfigStack",),
                ("loadConfigStack", "layers"),
                load_stack,
            ],
        ),
        _rpc(namespace, "unloadModel", {"identifier": "fuzz-not-loaded"}, [("identifier",)]),
    ]


_HISTORY_PATHS: list[tuple[Any, ...]] = [
    ("history",),
    ("history", "messages"),
    ("history", "messages", 0),
    ("history", "messages", 0, "role"),
    ("history", "messages", 0, "content"),
    ("history", "messages", 0, "content", 0, "type"),
    ("history", "messages", 0, "content", 0, "text"),
    ("history", "messages", 0, "content", 0, "fileType"),
    ("history", "messages", 0, "content", 0, "identifier"),
    ("history", "messages", 1, "content", 0, "toolCallRequest"),
]

ROUTES: dict[str, Route] = {
    r.path: r
    for r in [
        *_model_endpoints("llm"),
        _channel(
            "llm",
            "predict",
            {
                "modelSpecifier": SPEC,
                "history": HISTORY,
                "predictionConfigStack": prediction_stack(),
            },
            [
                ("modelSpecifier",),
                ("modelSpecifier", "query", "identifier"),
                *_HISTORY_PATHS,
                ("predictionConfigStack",),
                ("predictionConfigStack", "layers"),
                (*_FIELD, 0, "value", "value"),
                (*_FIELD, 0, "value", "checked"),
                (*_FIELD, 1, "value"),
                (*_FIELD, 2),
                ("fuzzyPresetIdentifier",),
            ],
        ),
        _rpc(
            "llm",
            "applyPromptTemplate",
            {
                "specifier": SPEC,
                "history": HISTORY,
                "predictionConfigStack": {"layers": []},
                "opts": {},
            },
            [
                *_SPEC_PATHS,
                *_HISTORY_PATHS,
                ("opts",),
                ("opts", "toolDefinitions"),
                ("opts", "omitBosToken"),
            ],
        ),
        *_model_endpoints("embedding"),
        _rpc(
            "embedding",
            "embedString",
            {"modelSpecifier": SPEC, "inputString": "hello"},
            [("modelSpecifier",), ("modelSpecifier", "query", "identifier"), ("inputString",)],
        ),
        _rpc("system", "listDownloadedModels", None, []),
        _rpc("system", "version", None, []),
        _rpc(
            "files",
            "uploadFileBase64",
            {"name": "a.txt", "contentBase64": "aGVsbG8="},
            [("name",), ("contentBase64",)],
        ),
        _rpc("repository", "searchModels", {"opts": {"searchTerm": "gemma"}}, [("opts",)]),
        _rpc(
            "repository",
            "getModelDownloadOptions",
            {"modelSearchResultIdentifier": "x"},
            [("modelSearchResultIdentifier",)],
        ),
        _channel(
            "repository", "downloadModel", {"downloadIdentifier": "x"}, [("downloadIdentifier",)]
        ),
    ]
}

NAMESPACES = ("llm", "embedding", "system", "files", "repository")

#: Frame types the protocol lets pass without a reply (lms has nothing to acknowledge).
SILENT_TYPES = frozenset(
    {
        "channelSend",
        "channelAck",
        "signalUnsubscribe",
        "writableSignalUnsubscribe",
        "writableSignalUpdate",
        "communicationWarning",
    }
)

_OTHER_FRAMES = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [
                    "keepAlive",
                    "channelSend",
                    "channelAck",
                    "signalSubscribe",
                    "writableSignalSubscribe",
                    "signalUnsubscribe",
                    "writableSignalUpdate",
                    "communicationWarning",
                    "rpcResult",
                    "channelClose",
                    "nonsense",
                    "",
                ]
            )
        },
        optional={
            "channelId": st.one_of(st.integers(-5, 5), h.hostile),
            "subscribeId": st.one_of(st.integers(-5, 5), h.hostile),
            "message": st.one_of(st.just({"type": "cancel"}), h.hostile),
            "endpoint": st.one_of(st.sampled_from(["predict", "version"]), h.hostile),
            "warning": h.string,
            "callId": h.hostile,
        },
    ),
    st.fixed_dictionaries({"type": h.hostile}),
)


@st.composite
def frame(draw: st.DrawFn, namespace: str) -> tuple[bytes, str, bool]:
    """One frame for a socket of ``namespace``: (bytes, readable form, as a binary frame?).

    Mostly a mutated call of one of the namespace's endpoints, sometimes an endpoint of another
    namespace (unknown here), a frame of another type, or a binary frame.
    """
    kind = draw(st.integers(0, 19))
    if kind == 0:
        data = draw(st.binary(max_size=64))
        return data, f"binary frame {data!r}", True
    if kind <= 2:
        value = draw(_OTHER_FRAMES)

        return encode(value).encode("utf-8", "surrogatepass"), h.as_text(value), False
    own = [r for p, r in ROUTES.items() if p.startswith(f"/{namespace}:")]
    pool = own if kind > 4 else list(ROUTES.values())
    route = draw(st.sampled_from(pool))
    if kind > 4 and route.path.endswith(":predict") and draw(st.booleans()):
        # a fourth prediction field: structured output, tools, a prompt template, ...
        body, shown = draw(_with_extra_field(route))
        return body, shown, False
    body, shown = draw(case(route))
    return body, f"{route.path} {shown}", False


@st.composite
def _with_extra_field(draw: st.DrawFn, route: Route) -> tuple[bytes, str]:

    value = copy.deepcopy(route.base)
    fields = value["creationParameter"]["predictionConfigStack"]["layers"][0]["config"]["fields"]
    fields.append(draw(extra_field))
    return encode(value).encode("utf-8", "surrogatepass"), f"{route.path} {h.as_text(value)}"


def auth_packet(identifier: str, passkey: str) -> st.SearchStrategy[tuple[bytes, str, bool]]:
    """Hostile auth packets built from a valid one (the token of the fuzz session)."""
    valid = {"authVersion": 1, "clientIdentifier": identifier, "clientPasskey": passkey}
    route = Route("/auth", valid, {}, nested=[])

    @st.composite
    def build(draw: st.DrawFn) -> tuple[bytes, str, bool]:
        if draw(st.integers(0, 9)) == 0:
            data = draw(st.binary(max_size=64))
            return data, f"binary frame {data!r}", True
        tweak = draw(st.integers(0, 4))
        if tweak == 0:
            fixed = draw(
                st.sampled_from(
                    [
                        {**valid, "clientPasskey": "x" * 257},
                        {**valid, "clientIdentifier": "guest:" + "a" * 300},
                        {**valid, "clientIdentifier": Raw('"\\ud800"')},
                        {**valid, "authVersion": 2},
                        {**valid, "authVersion": Raw("1.0")},
                        {**valid, "authVersion": Raw("1e400")},
                        {**valid, "clientPasskey": passkey + "\x00"},
                        {"authVersion": 1, "clientIdentifier": "guest:abc", "clientPasskey": "def"},
                    ]
                )
            )

            return encode(fixed).encode("utf-8", "surrogatepass"), h.as_text(fixed), False
        body, shown = draw(case(route))
        return body, shown, False

    return build()
