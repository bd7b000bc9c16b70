"""Structured output: JSON schemas as llama.cpp grammars, and OpenAI's ``response_format``.

The grammar comes from llama.cpp's own converter (:func:`choice.json_schema_grammar`); the
engine masks every token that would leave it, so the output is JSON of the schema's shape by
construction — as long as generation is not cut by ``max_tokens``. What the converter enforces:
types, ``properties``/``required`` (no other keys unless ``additionalProperties`` allows them),
``enum``, ``const``, ``anyOf``/``oneOf``, ``allOf`` of objects, arrays with
``items``/``prefixItems``/``minItems``/``maxItems``, string ``minLength``/``maxLength``/
``pattern``/``format`` (date, time, uuid...), local ``$ref``. What it ignores: numeric bounds
(``minimum``, ``maximum``, ``multipleOf``), ``uniqueItems``, ``not``, ``if``/``then``.

Schemas and their grammars are bounded first (:mod:`grammar_limits`, ``docs/LIMITS.md``): a
schema too deep, too large or repeating too much is a 400 naming the field, never a crash of
llama.cpp's recursive parser. Building a grammar is CPU work: callers run it off the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lms.errors import InvalidParameterError, MissingParameterError
from lms.inference import grammar_limits

RESPONSE_FORMAT_TYPES = ("json_schema", "json_object", "text")


def schema_grammar(schema: Any, *, param: str) -> str:
    """The GBNF grammar of JSON valid against ``schema``; a 400 naming ``param`` when the schema
    is not an object, points outside itself (``$ref`` to a URL), is past the bounds of
    ``docs/LIMITS.md`` (depth, size, repetitions), or cannot be converted."""
    check_schema(schema, param=param)
    return converted_grammar(schema, param=param)


def check_schema(schema: Any, *, param: str) -> int:
    """Refuse (a 400 naming ``param``) a schema that is not an object, has a remote ``$ref``
    or is past the bounds; return its repetition total (see :mod:`grammar_limits`)."""
    if not isinstance(schema, dict):
        raise InvalidParameterError(f"'{param}' must be a JSON schema object", param=param)
    total = grammar_limits.check_schema(schema, param=param)
    remote = _remote_ref(schema)
    if remote is not None:
        raise InvalidParameterError(
            f"'{param}' refers to {remote!r}: only local references (\"#/...\") are supported",
            param=param,
        )
    return total


def converted_grammar(schema: dict[str, Any], *, param: str) -> str:
    """The grammar of a schema already passed by :func:`check_schema`, itself bounded and
    parsed by llama.cpp (a 400 naming ``param`` when it is not)."""
    try:
        grammar = _convert(schema)
    except (ValueError, RecursionError) as exc:
        raise InvalidParameterError(
            f"'{param}' is not a JSON schema lms can constrain output to ({exc})", param=param
        ) from None
    grammar_limits.check_grammar(grammar, param=param)
    grammar_limits.parse(grammar, param=param)
    return grammar


def any_json_object_grammar() -> str:
    """The grammar of any JSON object (``response_format: {"type": "json_object"}``)."""
    return _convert({"type": "object"})


def response_format_grammar(value: Any, *, param: str = "response_format") -> str | None:
    """The grammar a chat-completions ``response_format`` asks for (None: free text).

    ``{"type": "json_schema", "json_schema": {"name", "strict"?, "schema"}}`` constrains the
    content to JSON valid against ``schema``; ``{"type": "json_object"}`` to any JSON object;
    ``{"type": "text"}`` changes nothing. Every malformed part is a 400 naming it.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidParameterError(f"'{param}' must be an object", param=param)
    kind = value.get("type")
    if kind not in RESPONSE_FORMAT_TYPES:
        raise InvalidParameterError(
            f"'{param}.type' must be 'json_schema', 'json_object' or 'text'",
            param=f"{param}.type",
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return any_json_object_grammar()
    spec = value.get("json_schema")
    if spec is None:
        raise MissingParameterError(
            f"'{param}.json_schema' is required when the type is 'json_schema'",
            param=f"{param}.json_schema",
        )
    return json_schema_format_grammar(spec, param=f"{param}.json_schema")


def json_schema_format_grammar(spec: Any, *, param: str) -> str:
    """The grammar of a ``{"name", "strict"?, "description"?, "schema"}`` format object (the
    ``json_schema`` of chat completions, and the shape of ``text.format`` in the Responses API).
    """
    if not isinstance(spec, Mapping):
        raise InvalidParameterError(f"'{param}' must be an object", param=param)
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise InvalidParameterError(
            f"'{param}.name' must be a non-empty string", param=f"{param}.name"
        )
    for key, kind, label in (("strict", bool, "a boolean"), ("description", str, "a string")):
        if spec.get(key) is not None and not isinstance(spec[key], kind):
            raise InvalidParameterError(f"'{param}.{key}' must be {label}", param=f"{param}.{key}")
    if spec.get("schema") is None:
        raise MissingParameterError(f"'{param}.schema' is required", param=f"{param}.schema")
    return schema_grammar(spec["schema"], param=f"{param}.schema")


def text_format_grammar(value: Any, *, param: str = "text", tools: bool = False) -> str | None:
    """The grammar the Responses API's ``text`` option asks for (None: free text).

    ``{"format": {"type": "text"}}`` changes nothing; ``{"type": "json_object"}`` constrains the
    output to a JSON object; ``{"type": "json_schema", "name", "schema", "strict"?,
    "description"?}`` to JSON valid against ``schema``. Every malformed part is a 400 naming it,
    and so is a JSON format with ``tools`` (a grammar would keep the model from calling them).
    """
    grammar = _text_format_grammar(value, param)
    if grammar is not None and tools:
        raise InvalidParameterError(
            f"'{param}.format' cannot constrain the output of a response with tools yet: use"
            " the 'text' format, or no tools",
            param=f"{param}.format",
        )
    return grammar


def _text_format_grammar(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or "format" not in value:
        raise InvalidParameterError(f"'{param}.format' is required", param=f"{param}.format")
    spec = value["format"]
    where = f"{param}.format"
    if not isinstance(spec, Mapping):
        raise InvalidParameterError(f"'{where}' must be an object", param=where)
    kind = spec.get("type")
    if kind not in RESPONSE_FORMAT_TYPES:
        raise InvalidParameterError(
            f"'{where}.type' must be 'json_schema', 'json_object' or 'text'", param=f"{where}.type"
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return any_json_object_grammar()
    return json_schema_format_grammar(spec, param=where)


# This converter lets raw control characters (a newline...) into JSON strings, which makes the
# JSON invalid (seen on the default model), and a pattern's "." emit an unescaped '"' or '\\'.
# Upstream llama.cpp excludes them from "char"; both rules get that fix.
_RULE_FIXES = (
    (r'char ::= [^"\\] |', r'char ::= [^"\\\x7F\x00-\x1F] |'),
    (r"dot ::= [^\x0A\x0D]", r'dot ::= [^"\\\x7F\x00-\x1F]'),
)


def _convert(schema: dict[str, Any]) -> str:
    # Imported here: the converter lives in llama_cpp, which only the engine imports, and the
    # prompt-side users of tools.py (templates) should not load llama.cpp with it.
    from lms.inference.choice import json_schema_grammar

    grammar = json_schema_grammar(schema)
    lines = grammar.splitlines()
    for old, new in _RULE_FIXES:
        lines = [new + line[len(old) :] if line.startswith(old) else line for line in lines]
    return "\n".join(lines)


def _remote_ref(node: Any) -> str | None:
    """The first ``$ref`` in ``node`` that is not a local JSON pointer (``#...``), if any."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
                return str(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None
