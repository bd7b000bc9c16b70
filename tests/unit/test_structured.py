"""response_format and JSON schema → grammar: shapes accepted, every bad part named."""

from __future__ import annotations

from typing import Any

import pytest

from lms.errors import InvalidRequestError
from lms.inference.structured import (
    any_json_object_grammar,
    json_schema_format_grammar,
    response_format_grammar,
    schema_grammar,
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "mood": {"enum": ["happy", "sad"]},
    },
    "required": ["name", "age", "mood"],
}


def rules(grammar: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in grammar.splitlines())


@pytest.mark.parametrize("value", [None, {"type": "text"}])
def test_free_text_needs_no_grammar(value: Any) -> None:
    assert response_format_grammar(value) is None


def test_json_schema_becomes_a_grammar_of_its_properties() -> None:
    grammar = response_format_grammar(
        {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
    )
    assert grammar is not None
    root = rules(grammar)["root"]
    # Required properties, in order, each with its own rule; the enum lists its two values.
    assert root.index("name-kv") < root.index("age-kv") < root.index("mood-kv")
    assert rules(grammar)["mood"] == '"\\"happy\\"" | "\\"sad\\""'
    assert rules(grammar)["age-kv"].endswith(" integer")
    assert rules(grammar)["name-kv"].endswith(" string")


def test_json_object_is_any_object() -> None:
    grammar = response_format_grammar({"type": "json_object"})
    assert grammar == any_json_object_grammar()
    assert rules(grammar)["root"] == "object"
    assert rules(grammar)["object"].startswith('"{"')


def test_local_refs_resolve() -> None:
    schema = {
        "type": "object",
        "properties": {"home": {"$ref": "#/$defs/place"}},
        "required": ["home"],
        "$defs": {"place": {"type": "object", "properties": {"city": {"type": "string"}}}},
    }
    grammar = schema_grammar(schema, param="p")
    assert "city-kv" in grammar


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("json", "response_format"),
        ({}, "response_format.type"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": "person"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"name": 3, "schema": PERSON}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"strict": "yes", "schema": PERSON}},
            "response_format.json_schema.strict",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x"}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"$ref": "https://evil/x.json"}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "type": "json_schema",
                "json_schema": {"schema": {"type": "string", "pattern": "no-anchors"}},
            },
            "response_format.json_schema.schema",
        ),
    ],
)
def test_bad_shapes_name_the_field(value: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        response_format_grammar(value)
    assert info.value.param == param
    assert info.value.status == 400
    assert param in info.value.message


def test_remote_refs_are_refused_wherever_they_hide() -> None:
    schema = {"type": "object", "properties": {"a": {"anyOf": [{"$ref": "http://x/y"}]}}}
    with pytest.raises(InvalidRequestError, match="only local references"):
        schema_grammar(schema, param="s")


def test_responses_text_format_shape() -> None:
    grammar = json_schema_format_grammar(
        {"type": "json_schema", "name": "person", "schema": PERSON}, param="text.format"
    )
    assert "mood-kv" in grammar
    with pytest.raises(InvalidRequestError) as info:
        json_schema_format_grammar({"type": "json_schema"}, param="text.format")
    assert info.value.param == "text.format.schema"


def test_strings_cannot_hold_raw_control_characters() -> None:
    # The converter's own "char" rule lets a raw newline into a string: invalid JSON (seen on
    # the default model). A pattern's "." must not emit an unescaped quote either.
    schema = {
        "type": "object",
        "properties": {"s": {"type": "string"}, "p": {"type": "string", "pattern": "^a.$"}},
    }
    grammar = rules(schema_grammar(schema, param="p"))
    assert grammar["char"].startswith(r'[^"\\\x7F\x00-\x1F] |')
    assert grammar["dot"] == r'[^"\\\x7F\x00-\x1F]'
