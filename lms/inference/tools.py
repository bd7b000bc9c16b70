"""Tools offered to a model: OpenAI ``tools``/``tool_choice``, how tools reach the prompt, and
grammars that force a call. (The calls a model makes are read by :mod:`tool_calls`.)

**Call format.** A GGUF template trained for tool use (``ModelFile.trained_for_tool_use``) gets
the tools and the tool messages as they are, and the model answers in its own format. Everywhere
else — the gemma/ChatML fallbacks, GGUF templates that know nothing of tools — the tools are
listed in the system text (:func:`tools_prompt`) and the model is asked to answer with a JSON
object per call, the same way earlier calls of the conversation are written back::

    {"name": "<tool name>", "arguments": {...}}

Not LM Studio's ``[TOOL_REQUEST]…[END_TOOL_REQUEST]``: a bare JSON object is what a small model
writes most readily, and a grammar forcing it is a JSON-schema grammar (:func:`call_grammar`).
The reader accepts that object and the usual native wrappers besides (see :mod:`tool_calls`).

**tool_choice.** ``none``: no tools reach the prompt and nothing is parsed. ``auto``: offered,
the model may answer or call. ``required``: a grammar forces exactly one well-formed call of one
of the tools, with arguments matching its ``parameters`` schema; ``{"type": "function",
"function": {"name": X}}`` forces a call of X (all tools are still shown).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lms.errors import InvalidParameterError
from lms.inference import grammar_limits
from lms.inference.structured import check_schema, converted_grammar

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _no_parameters() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, description and JSON schema of arguments."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=_no_parameters)

    def openai(self) -> dict[str, Any]:
        """The OpenAI ``tools[]`` entry (what chat templates expect in ``tools``)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    """``mode`` none/auto/required; ``name`` set when one function is forced."""

    mode: Literal["none", "auto", "required"]
    name: str | None = None

    def forced(self, tools: Sequence[Tool]) -> list[Tool]:
        """The tools a grammar must force a call of (empty: nothing is forced)."""
        if self.mode != "required":
            return []
        return [t for t in tools if self.name is None or t.name == self.name]

    def offered(self, tools: Sequence[Tool]) -> list[Tool]:
        """The tools the prompt shows the model."""
        return [] if self.mode == "none" else list(tools)


# --- request fields ----------------------------------------------------------------------------


def parse_tools(value: Any, *, param: str = "tools") -> list[Tool]:
    """OpenAI ``tools``: ``[{"type": "function", "function": {name, description?, parameters?,
    strict?}}]``. Every malformed part is a 400 naming it; names are unique."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidParameterError(f"'{param}' must be a list", param=param)
    tools: list[Tool] = []
    for i, entry in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(entry, dict):
            raise InvalidParameterError(f"'{where}' must be an object", param=where)
        if entry.get("type") != "function":
            raise InvalidParameterError(f"'{where}.type' must be 'function'", param=f"{where}.type")
        function = entry.get("function")
        if not isinstance(function, dict):
            raise InvalidParameterError(
                f"'{where}.function' must be an object", param=f"{where}.function"
            )
        tool = read_function(function, f"{where}.function")
        if any(t.name == tool.name for t in tools):
            raise InvalidParameterError(
                f"'{where}.function.name' {tool.name!r} is used by two tools",
                param=f"{where}.function.name",
            )
        tools.append(tool)
    return tools


def read_function(
    function: dict[str, Any], where: str, *, schema_field: str = "parameters"
) -> Tool:
    """One function definition (``name``, ``description``, the JSON schema of its arguments
    under ``schema_field``) as a :class:`Tool`; errors name fields under ``where``."""
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidParameterError(
            f"'{where}.name' must be 1 to 64 letters, digits, '_' or '-'", param=f"{where}.name"
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidParameterError(
            f"'{where}.description' must be a string", param=f"{where}.description"
        )
    parameters = function.get(schema_field)
    if parameters is None:
        parameters = _no_parameters()
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise InvalidParameterError(
            f"'{where}.{schema_field}' must be a JSON schema of type 'object'",
            param=f"{where}.{schema_field}",
        )
    # Bounded even when no grammar is built: templates and copies walk it recursively.
    grammar_limits.check_schema(parameters, param=f"{where}.{schema_field}", for_grammar=False)
    if function.get("strict") is not None and not isinstance(function["strict"], bool):
        raise InvalidParameterError(f"'{where}.strict' must be a boolean", param=f"{where}.strict")
    return Tool(name=name, description=description, parameters=parameters)


def parse_tool_choice(
    value: Any, tools: Sequence[Tool], *, param: str = "tool_choice"
) -> ToolChoice:
    """``"none" | "auto" | "required" | {"type": "function", "function": {"name"}}``; absent
    means ``auto`` with tools, ``none`` without. Forcing a call needs tools to call."""
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if value in ("none", "auto", "required"):
        choice = ToolChoice(value)
    elif isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidParameterError(
                f"'{param}.function.name' must be a string", param=f"{param}.function.name"
            )
        if not any(t.name == name for t in tools):
            offered = ", ".join(t.name for t in tools) or "none"
            raise InvalidParameterError(
                f"'{param}.function.name' {name!r} is not one of the tools (offered: {offered})",
                param=f"{param}.function.name",
            )
        choice = ToolChoice("required", name)
    else:
        raise InvalidParameterError(
            f"'{param}' must be 'none', 'auto', 'required' or"
            ' {"type": "function", "function": {"name": ...}}',
            param=param,
        )
    if choice.mode == "required" and not tools:
        raise InvalidParameterError(f"'{param}' is 'required' but no tools are given", param=param)
    return choice


# --- grammar -----------------------------------------------------------------------------------


def call_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """A JSON schema of ``{"name": <one of tools>, "arguments": <valid for that tool>}``.

    Each tool's parameters go to ``$defs`` with their local ``$ref``s re-pointed, so that
    ``#/...`` in a tool schema still means that tool's schema.
    """
    calls: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    for i, tool in enumerate(tools):
        key = f"tool{i}-arguments"
        defs.update(_hoisted(tool.parameters, key))
        calls.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool.name},
                    "arguments": {"$ref": f"#/$defs/{key}"},
                },
                "required": ["name", "arguments"],
            }
        )
    schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {**schema, "$defs": defs}


def call_grammar(
    tools: Sequence[Tool], *, param: str = "tools", fields: Sequence[str] | None = None
) -> str:
    """The GBNF grammar of exactly one call (format of this module) of one of ``tools``, with
    arguments valid for that tool's schema. A tool whose schema cannot be converted or is past
    the bounds of ``docs/LIMITS.md`` is a 400 naming ``<param>[i].function.parameters`` (or
    ``<param>`` for bounds only the tools together cross); ``fields`` names each tool's schema
    instead, when ``tools`` are not the request's list as it is."""
    if not tools:
        raise ValueError("a call grammar needs at least one tool")
    if fields is None:
        fields = [f"{param}[{i}].function.parameters" for i in range(len(tools))]
    total = sum(
        check_schema(tool.parameters, param=field)
        for tool, field in zip(tools, fields, strict=True)
    )
    if total > grammar_limits.MAX_SCHEMA_REPETITIONS:
        raise InvalidParameterError(
            f"'{param}' ask for {total:,} repetitions in all (minLength, maxItems...); at most"
            f" {grammar_limits.MAX_SCHEMA_REPETITIONS:,} can become a grammar",
            param=param,
        )
    try:
        return converted_grammar(call_schema(tools), param=param)
    except InvalidParameterError:
        for tool, field in zip(tools, fields, strict=True):  # find the culprit, to name it
            converted_grammar(tool.parameters, param=field)
        raise


def _hoisted(parameters: dict[str, Any], key: str) -> dict[str, Any]:
    """``{key: parameters}`` plus the schema's own ``$defs``/``definitions`` renamed
    ``<key>-<name>``, every local ``$ref`` rewritten to match (unique rule names per tool)."""
    schema = copy.deepcopy(parameters)
    own: dict[str, Any] = {}
    for section in ("definitions", "$defs"):
        if isinstance(schema.get(section), dict):
            own.update(schema.pop(section))

    def rewrite(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#"):
                node["$ref"] = _rebased(ref, key)
            for child in node.values():
                rewrite(child)
        elif isinstance(node, list):
            for child in node:
                rewrite(child)

    hoisted = {key: schema, **{f"{key}-{name}": sub for name, sub in own.items()}}
    rewrite(hoisted)
    return hoisted


def _rebased(ref: str, key: str) -> str:
    parts = ref[1:].split("/")[1:] if ref.startswith("#/") else []
    if len(parts) >= 2 and parts[0] in ("$defs", "definitions"):
        return "/".join(["#", "$defs", f"{key}-{parts[1]}", *parts[2:]])
    return "/".join(["#", "$defs", key, *parts])


# --- the prompt --------------------------------------------------------------------------------


def tools_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """System text that offers ``tools`` (OpenAI entries) and asks for this module's format."""
    if not tools:
        return ""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "You can call these tools (JSON schema):\n"
        f"{lines}\n"
        'To call one, answer with only {"name": <tool name>, "arguments": <object>}.'
    )


def written_calls(message: dict[str, Any]) -> str:
    """An assistant message's text, with its ``tool_calls`` written after it in this module's
    format (one JSON object per line)."""
    content = _text(message.get("content"))
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return content
    written = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else {}
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(ValueError):
                arguments = json.loads(arguments)
        written.append(
            json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
        )
    return "\n".join(part for part in [content, *written] if part)


def result_text(message: dict[str, Any]) -> str:
    """A ``tool`` message as plain text, for templates without a tool role."""
    name = message.get("name") or message.get("tool_call_id") or "tool"
    return f"Result of {name}:\n{_text(message.get('content'))}"


def template_inputs(
    messages: list[dict[str, Any]], tools: Sequence[Tool], *, template_handles_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and ``tools`` to render with a chat template.

    Tool messages get the ``name`` of the call they answer (found by ``tool_call_id``), and call
    arguments given as JSON text become objects (what tool-aware templates iterate over). When
    the template does not handle tools (a GGUF template not trained for them), the tools are
    written into the system message, calls into the assistant text and results into user turns.
    """
    names: dict[str, str] = {}
    prepared: list[dict[str, Any]] = []
    for message in messages:
        copy_ = dict(message)
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and isinstance(calls, list):
            copy_["tool_calls"] = [_object_arguments(call, names) for call in calls]
        elif message.get("role") == "tool" and not message.get("name"):
            call_id = message.get("tool_call_id")
            if isinstance(call_id, str) and call_id in names:
                copy_["name"] = names[call_id]
        prepared.append(copy_)
    offered = [tool.openai() for tool in tools]
    if template_handles_tools:
        return prepared, offered or None
    plain: list[dict[str, Any]] = []
    for message in prepared:
        if message.get("role") == "tool":
            plain.append({"role": "user", "content": result_text(message)})
        elif message.get("role") == "assistant" and message.get("tool_calls"):
            plain.append({"role": "assistant", "content": written_calls(message)})
        else:
            plain.append(message)
    if offered:
        text = tools_prompt(offered)
        if plain and plain[0].get("role") in ("system", "developer"):
            first = plain[0]
            plain[0] = {**first, "content": f"{_text(first.get('content'))}\n\n{text}".strip()}
        else:
            plain.insert(0, {"role": "system", "content": text})
    return plain, None


def _object_arguments(call: Any, names: dict[str, str]) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = dict(call["function"])
    if isinstance(call.get("id"), str) and isinstance(function.get("name"), str):
        names[call["id"]] = function["name"]
    if isinstance(function.get("arguments"), str):
        with contextlib.suppress(ValueError):
            parsed = json.loads(function["arguments"])
            if isinstance(parsed, dict):
                function["arguments"] = parsed
    return {**call, "function": function}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)
