"""A ``POST /v1/messages`` body, validated: Anthropic's messages, system, tools and tool choice
turned into the chat messages and :class:`Tool` list the rest of lms works with.

Content blocks: ``text`` anywhere; ``tool_use`` (``id``, ``name``, ``input``) in assistant
messages, which become OpenAI-style ``tool_calls``; ``tool_result`` (``tool_use_id``,
``content``, ``is_error``) in user messages, which become ``tool`` messages ahead of the user's
text. Any other block (images, documents, thinking) is a 400 naming it.

Tools are custom tools (``name``, ``description``, ``input_schema``); Anthropic's server tools
(web search, code execution...) are a 400. ``tool_choice``: ``auto`` offers them, ``any`` forces
a call of one of them, ``tool`` forces a call of the one named, ``none`` hides them; forcing
uses the grammar of :func:`lms.inference.tools.call_grammar`. ``disable_parallel_tool_use`` is
accepted; only a forced call is guaranteed to be a single call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lms.api import bodies
from lms.errors import InvalidParameterError, MissingParameterError
from lms.inference.sampling import SamplingParams
from lms.inference.tools import Tool, ToolChoice, call_grammar, read_function

_ROLES = ("user", "assistant")
_CHOICES = ("auto", "any", "tool", "none")


def _bad(where: str, message: str) -> InvalidParameterError:
    return InvalidParameterError(f"'{where}' {message}", param=where)


def _block_type(block: Any, where: str) -> str:
    if not isinstance(block, dict):
        raise _bad(where, "must be a content block object")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _bad(f"{where}.type", "is missing")
    return kind


def _text_of(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}.text", "must be a string")
    return text


def text_blocks(value: Any, where: str) -> str:
    """A string, or a list of ``{"type": "text", "text": ...}`` blocks, as one text."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _bad(where, "must be a string or a list of content blocks")
    texts: list[str] = []
    for j, block in enumerate(value):
        kind = _block_type(block, f"{where}[{j}]")
        if kind != "text":
            raise _bad(f"{where}[{j}].type", f"is {kind!r}; only 'text' blocks are supported here")
        texts.append(_text_of(block, f"{where}[{j}]"))
    return "\n".join(texts)


def _user_message(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise _bad(where, "must be a string or a list of content blocks")
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"{at}.tool_use_id", "must be a non-empty string")
            result = text_blocks(block.get("content", ""), f"{at}.content")
            is_error = block.get("is_error", False)
            if not isinstance(is_error, bool):
                raise _bad(f"{at}.is_error", "must be a boolean")
            if is_error:
                result = f"Error: {result}"
            results.append({"role": "tool", "tool_call_id": call_id, "content": result})
        else:
            raise _bad(
                f"{at}.type", f"is {kind!r}; user messages take 'text' and 'tool_result' blocks"
            )
    if texts or not results:
        results.append({"role": "user", "content": "\n".join(texts)})
    return results


def _assistant_message(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise _bad(where, "must be a string or a list of content blocks")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"{at}.id", "must be a non-empty string")
            if not isinstance(name, str) or not name:
                raise _bad(f"{at}.name", "must be a non-empty string")
            if not isinstance(arguments, dict):
                raise _bad(f"{at}.input", "must be an object")
            function = {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}
            calls.append({"id": call_id, "type": "function", "function": function})
        else:
            raise _bad(
                f"{at}.type", f"is {kind!r}; assistant messages take 'text' and 'tool_use' blocks"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return message


def parse_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``system`` and ``messages`` as chat messages (400 naming the field)."""
    raw = body.get("messages")
    if raw is None:
        raise MissingParameterError("'messages' is required", param="messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "must be a non-empty list")
    chat: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = text_blocks(system, "system")
        if text:
            chat.append({"role": "system", "content": text})
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, "must be an object")
        role = message.get("role")
        if role not in _ROLES:
            raise _bad(f"{where}.role", "must be 'user' or 'assistant'")
        if "content" not in message:
            raise MissingParameterError(f"'{where}.content' is required", param=f"{where}.content")
        if role == "user":
            chat.extend(_user_message(message["content"], f"{where}.content"))
        else:
            chat.append(_assistant_message(message["content"], f"{where}.content"))
    return chat


def parse_anthropic_tools(value: Any) -> list[Tool]:
    """Anthropic ``tools`` (custom tools only) as :class:`Tool`s; 400 naming the bad part."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("tools", "must be a list")
    tools: list[Tool] = []
    for i, entry in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(entry, dict):
            raise _bad(where, "must be an object")
        kind = entry.get("type", "custom")
        if kind != "custom":
            raise _bad(f"{where}.type", f"is {kind!r}: server tools are not supported, only custom")
        if "input_schema" not in entry:
            raise MissingParameterError(
                f"'{where}.input_schema' is required", param=f"{where}.input_schema"
            )
        tool = read_function(entry, where, schema_field="input_schema")
        if any(t.name == tool.name for t in tools):
            raise _bad(f"{where}.name", f"{tool.name!r} is used by two tools")
        tools.append(tool)
    return tools


def parse_anthropic_tool_choice(value: Any, tools: list[Tool]) -> ToolChoice:
    """``{"type": "auto" | "any" | "tool" | "none", "name"?}``; absent means ``auto``."""
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if not isinstance(value, dict) or value.get("type") not in _CHOICES:
        raise _bad("tool_choice", 'must be {"type": "auto" | "any" | "tool" | "none"}')
    parallel = value.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("tool_choice.disable_parallel_tool_use", "must be a boolean")
    kind: Literal["auto", "any", "tool", "none"] = value["type"]
    if kind in ("any", "tool") and not tools:
        raise _bad("tool_choice", f"is {kind!r} but no tools are given")
    if kind == "tool":
        name = value.get("name")
        if not any(tool.name == name for tool in tools):
            offered = ", ".join(tool.name for tool in tools)
            raise _bad("tool_choice.name", f"must name one of the tools ({offered})")
        return ToolChoice("required", name)
    return ToolChoice("required") if kind == "any" else ToolChoice(kind)


def _forcing_grammar(tools: list[Tool], forced: list[Tool]) -> str | None:
    """The grammar of a forced call, a bad or oversized schema named by its request field."""
    if not forced:
        return None
    fields = [f"tools[{tools.index(tool)}].input_schema" for tool in forced]
    return call_grammar(forced, param="tools", fields=fields)


@dataclass(frozen=True)
class MessagesRequest:
    """A validated ``/v1/messages`` body."""

    model: str
    messages: list[dict[str, Any]]
    params: SamplingParams
    stop_sequences: tuple[str, ...]
    stream: bool
    tools: list[Tool]
    choice: ToolChoice

    @classmethod
    def parse(cls, body: Mapping[str, Any], *, counting: bool = False) -> MessagesRequest:
        """Validate a body; ``counting`` (``count_tokens``) makes ``max_tokens`` optional.
        Builds the grammar of a forced call (CPU work: the routes call this on a thread)."""
        model = bodies.require(body, "model", str)
        if counting:
            max_tokens = bodies.get(body, "max_tokens", int, 1)
            assert max_tokens is not None
        else:
            max_tokens = bodies.require(body, "max_tokens", int)
        if max_tokens < 1:
            raise _bad("max_tokens", "must be at least 1")
        messages = parse_messages(body)
        stops = bodies.get(body, "stop_sequences", list, [])
        assert stops is not None
        if not all(isinstance(s, str) and s for s in stops) or len(stops) > 16:
            raise _bad("stop_sequences", "must be a list of at most 16 non-empty strings")
        tools = parse_anthropic_tools(body.get("tools"))
        choice = parse_anthropic_tool_choice(body.get("tool_choice"), tools)
        forced = choice.forced(tools)
        defaults = SamplingParams()
        top_k = bodies.get(body, "top_k", int, defaults.top_k)
        assert top_k is not None
        if top_k < 0:
            raise _bad("top_k", "must be at least 0")
        params = SamplingParams(
            temperature=bodies.number_in(body, "temperature", 0.0, 1.0, defaults.temperature),
            top_p=bodies.number_in(body, "top_p", 0.0, 1.0, defaults.top_p),
            top_k=top_k,
            max_tokens=max_tokens,
            grammar=_forcing_grammar(tools, forced),
            cache_prompt=bool(bodies.get(body, "cache_prompt", bool, True)),  # as on /v1/*
            speculative=bodies.speculative(body),  # as on /v1/*; no draft_model here
        )
        return cls(
            model=model,
            messages=messages,
            params=params,
            stop_sequences=tuple(stops),
            stream=bool(bodies.get(body, "stream", bool, False)),
            tools=tools,
            choice=choice,
        )

    @property
    def offered(self) -> list[Tool]:
        """The tools the prompt shows the model."""
        return self.choice.offered(self.tools)

    @property
    def forced(self) -> bool:
        """Whether a grammar forces the answer to be one tool call."""
        return bool(self.choice.forced(self.tools))

    @property
    def prefill(self) -> str | None:
        """A last assistant message without calls: the answer continues its text."""
        last = self.messages[-1]
        if len(self.messages) > 1 and last["role"] == "assistant" and "tool_calls" not in last:
            return str(last["content"])
        return None
