"""Bounded grammars: every schema or GBNF grammar past a bound of docs/LIMITS.md is a 400 naming
the field before llama-cpp-python's converter or llama.cpp's parser sees it; ordinary schemas
and grammars still convert, and llama.cpp's parser judges what passes the bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from lms.errors import InvalidParameterError, InvalidRequestError
from lms.inference import grammar_limits as limits
from lms.inference.structured import schema_grammar, text_format_grammar
from lms.inference.tools import Tool, call_grammar, parse_tools


def nested(levels: int) -> dict[str, Any]:
    """An object schema with ``levels`` objects inside one another (2 JSON levels each)."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def refused(schema: Any, *, param: str = "s") -> str:
    with pytest.raises(InvalidParameterError) as caught:
        schema_grammar(schema, param=param)
    assert caught.value.param == param and f"'{param}'" in str(caught.value)
    return str(caught.value)


ORDINARY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 100},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 10},
        "mood": {"enum": ["happy", "sad"]},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        "address": nested(5),
    },
    "required": ["name", "tags", "mood"],
}


def test_ordinary_schemas_and_the_largest_allowed_counts_convert() -> None:
    assert "root ::=" in schema_grammar(ORDINARY, param="s")
    for schema in (
        {"type": "string", "maxLength": limits.MAX_REPETITIONS},
        {"type": "string", "minLength": limits.MAX_REPETITIONS},
        {"type": "array", "maxItems": limits.MAX_REPETITIONS, "items": {"type": "integer"}},
        {"type": "string", "pattern": f"^a{{0,{limits.MAX_REPETITIONS}}}$"},
        nested(15),
    ):
        grammar = schema_grammar(schema, param="s")
        assert len(grammar) <= limits.MAX_GRAMMAR_CHARS


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "string", "maxLength": 30_000}, "maxLength 30000"),
        ({"type": "string", "maxLength": 1e9}, "maxLength"),
        ({"type": "string", "minLength": 100_000_000}, "minLength"),
        ({"type": "string", "minLength": -1}, "minLength -1"),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 30_000}, "maxItems"),
        ({"type": "array", "minItems": 1001}, "minItems"),
        ({"type": "string", "pattern": "^a{0,30000}$"}, "30,000 times"),
        ({"type": "string", "pattern": "^((a{0,100}){0,100}){0,100}$"}, "pattern"),
        ({"type": "string", "pattern": "a" * 5000}, "pattern longer"),
        (nested(17), "deeper than 32"),
        (nested(10_000), "deeper than 32"),  # an iterative walk: no RecursionError
        ({"anyOf": [{"type": "integer"}] * 20_001}, "20,000 values"),
        (
            {
                "type": "object",
                "properties": {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(21)},
            },
            "21,000 repetitions",
        ),
        (
            {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(129)}},
            "129 optional properties",
        ),
        (
            {"anyOf": [{"type": "object", "properties": {f"p{i}": {} for i in range(100)}}] * 11},
            "1,024 optional properties",
        ),
    ],
)
def test_schemas_past_a_bound_are_refused_naming_the_field(schema: Any, words: str) -> None:
    assert words in refused(schema)


def test_data_is_not_read_as_keywords() -> None:
    schema = {"enum": [{"maxLength": 99_999}], "default": {"minItems": 10**6}}
    assert "root ::=" in schema_grammar(schema, param="s")


def test_many_required_properties_are_fine() -> None:
    names = [f"p{i}" for i in range(1000)]
    schema = {"type": "object", "properties": {n: {} for n in names}, "required": names}
    assert "root ::=" in schema_grammar(schema, param="s")


@pytest.mark.parametrize(
    ("grammar", "words"),
    [
        ("root ::= " + "(" * 1025 + '"a"' + ")" * 1025, "1,024 parentheses"),
        ("root ::= " + "(" * 30_000 + '"a"' + ")" * 30_000, "1,024 parentheses"),
        ('root ::= "a"{0,30000}', "30,000 times"),
        ('root ::= "a"{1001}', "1,001 times"),
        ("root ::= r0\n" + "\n".join(f'r{i} ::= "a"' for i in range(2048)), "2,048 rules"),
        ('root ::= "' + "a" * (limits.MAX_GRAMMAR_CHARS + 1) + '"', "characters"),
        ('root ::= "a" (', "not a valid GBNF"),
        ('other ::= "a"', "not a valid GBNF"),
        ('root ::= root "a" | "b"', "not a valid GBNF"),
        ("", "non-empty"),
        (42, "non-empty"),
    ],
)
def test_raw_gbnf_past_a_bound_or_unparsable_is_refused(grammar: Any, words: str) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        limits.gbnf_grammar(grammar, param="structured.gbnfGrammar")
    assert caught.value.param == "structured.gbnfGrammar"
    assert words in str(caught.value)


def test_raw_gbnf_within_the_bounds_is_kept_as_it_is() -> None:
    deepest = "root ::= " + "(" * limits.MAX_GRAMMAR_DEPTH + '"a"' + ")" * limits.MAX_GRAMMAR_DEPTH
    # Parentheses inside strings, classes and comments are not nesting.
    quoted = 'root ::= "((((" [(((] "a"{0,1000} # ((((((\n'
    for grammar in (deepest, quoted, 'root ::= [a-z]+ ("," [a-z]+)*'):
        assert limits.gbnf_grammar(grammar, param="g") == grammar


def test_a_crash_sized_grammar_never_reaches_llama_cpp() -> None:
    """What killed the daemon, in a child process: refused, and the child lives to say so."""
    code = (
        "import json, sys\n"
        "from lms.errors import InvalidParameterError\n"
        "from lms.inference.grammar_limits import gbnf_grammar\n"
        "from lms.inference.structured import schema_grammar\n"
        "refused = 0\n"
        "for kind, value in json.loads(sys.stdin.read()):\n"
        "    try:\n"
        "        schema_grammar(value, param='s') if kind == 'schema' else gbnf_grammar(value,"
        " param='g')\n"
        "    except InvalidParameterError:\n"
        "        refused += 1\n"
        "print(refused)\n"
    )
    cases = [
        ["schema", {"type": "string", "maxLength": 30_000}],
        ["schema", {"type": "array", "maxItems": 30_000}],
        ["gbnf", "root ::= " + "(" * 30_000 + '"a"' + ")" * 30_000],
    ]
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(cases))


# --- tools -------------------------------------------------------------------------------------


def test_a_deep_tool_schema_is_a_400_even_when_only_shown() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": nested(300)}}]
    with pytest.raises(InvalidParameterError) as caught:
        parse_tools(tools)
    assert caught.value.param == "tools[0].function.parameters"


def test_a_shown_tool_may_repeat_more_than_a_grammar_can() -> None:
    big = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 30_000}}}
    assert parse_tools([{"type": "function", "function": {"name": "f", "parameters": big}}])


def test_forced_calls_name_the_tool_field_of_the_request() -> None:
    ok = Tool("ok")
    bad = Tool("bad", parameters={"type": "object", "properties": {"s": {"maxLength": 30_000}}})
    with pytest.raises(InvalidParameterError) as caught:
        call_grammar([ok, bad])
    assert caught.value.param == "tools[1].function.parameters"
    with pytest.raises(InvalidParameterError) as caught:
        call_grammar([bad], fields=["tools[7].input_schema"])
    assert caught.value.param == "tools[7].input_schema"


def test_tools_together_past_the_total_name_the_tools() -> None:
    schema = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(15)},
    }
    tools = [Tool("a", parameters=schema), Tool("b", parameters=schema)]
    with pytest.raises(InvalidParameterError) as caught:
        call_grammar(tools)
    assert caught.value.param == "tools"


# --- the Responses API's text.format ----------------------------------------------------------


def test_text_format_shapes() -> None:
    assert text_format_grammar(None) is None
    assert text_format_grammar({"format": {"type": "text"}}) is None
    assert "root ::=" in (text_format_grammar({"format": {"type": "json_object"}}) or "")
    spec = {"type": "json_schema", "name": "p", "schema": ORDINARY, "strict": True}
    assert text_format_grammar({"format": spec}) == schema_grammar(ORDINARY, param="x")


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ({}, "text.format"),
        ("json", "text.format"),
        ({"format": "json"}, "text.format"),
        ({"format": {"type": "yaml"}}, "text.format.type"),
        ({"format": {"type": "json_schema", "name": "x"}}, "text.format.schema"),
        (
            {"format": {"type": "json_schema", "schema": {"type": "string", "maxLength": 30_000}}},
            "text.format.schema",
        ),
    ],
)
def test_bad_text_formats_name_the_field(value: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        text_format_grammar(value)
    assert caught.value.param == param


def test_a_json_text_format_with_tools_is_refused_not_ignored() -> None:
    assert text_format_grammar({"format": {"type": "text"}}, tools=True) is None
    with pytest.raises(InvalidParameterError) as caught:
        text_format_grammar({"format": {"type": "json_object"}}, tools=True)
    assert caught.value.param == "text.format"
