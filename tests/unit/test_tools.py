"""tools / tool_choice validation, the call schema and grammar, and how tools reach the prompt."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from lms.errors import InvalidRequestError
from lms.inference.tools import (
    Tool,
    ToolChoice,
    call_grammar,
    call_schema,
    parse_tool_choice,
    parse_tools,
    template_inputs,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
NOW = {"type": "function", "function": {"name": "now"}}


# --- tools -------------------------------------------------------------------------------------


def test_tools_parse_with_defaults() -> None:
    weather, now = parse_tools([WEATHER, NOW])
    assert weather.name == "get_weather" and weather.description == "Weather now"
    assert weather.parameters["required"] == ["city"]
    assert now.parameters == {"type": "object", "properties": {}}
    assert now.openai() == {
        "type": "function",
        "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
    }
    assert parse_tools(None) == []


def function(**fields: Any) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", **fields}}]


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ({"type": "function"}, "tools"),
        (["f"], "tools[0]"),
        ([{"type": "retrieval", "function": {"name": "f"}}], "tools[0].type"),
        ([{"type": "function"}], "tools[0].function"),
        ([{"type": "function", "function": {}}], "tools[0].function.name"),
        (function(name="has space"), "tools[0].function.name"),
        (function(name="x" * 65), "tools[0].function.name"),
        (function(name="f\n"), "tools[0].function.name"),
        (function(description=3), "tools[0].function.description"),
        (function(parameters="{}"), "tools[0].function.parameters"),
        (function(parameters={"type": "string"}), "tools[0].function.parameters"),
        (function(strict="yes"), "tools[0].function.strict"),
        ([NOW, WEATHER, NOW], "tools[2].function.name"),
    ],
)
def test_bad_tools_name_the_field(value: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_tools(value)
    assert info.value.param == param
    assert param in info.value.message


# --- tool_choice -------------------------------------------------------------------------------

TOOLS = parse_tools([WEATHER, NOW])


@pytest.mark.parametrize(
    ("value", "tools", "expected"),
    [
        (None, TOOLS, ToolChoice("auto")),
        (None, [], ToolChoice("none")),
        ("none", TOOLS, ToolChoice("none")),
        ("auto", TOOLS, ToolChoice("auto")),
        ("required", TOOLS, ToolChoice("required")),
        ({"type": "function", "function": {"name": "now"}}, TOOLS, ToolChoice("required", "now")),
    ],
)
def test_tool_choice(value: Any, tools: list[Tool], expected: ToolChoice) -> None:
    assert parse_tool_choice(value, tools) == expected


def test_what_each_choice_offers_and_forces() -> None:
    assert ToolChoice("none").offered(TOOLS) == []
    assert ToolChoice("none").forced(TOOLS) == []
    assert ToolChoice("auto").offered(TOOLS) == TOOLS
    assert ToolChoice("auto").forced(TOOLS) == []
    assert ToolChoice("required").forced(TOOLS) == TOOLS
    named = ToolChoice("required", "now")
    assert named.offered(TOOLS) == TOOLS  # every tool is shown, one is forced
    assert [t.name for t in named.forced(TOOLS)] == ["now"]


@pytest.mark.parametrize(
    ("value", "tools", "param"),
    [
        ("always", TOOLS, "tool_choice"),
        (3, TOOLS, "tool_choice"),
        ({"type": "tool"}, TOOLS, "tool_choice"),
        ({"type": "function"}, TOOLS, "tool_choice.function.name"),
        ({"type": "function", "function": {"name": "nope"}}, TOOLS, "tool_choice.function.name"),
        ("required", [], "tool_choice"),
    ],
)
def test_bad_tool_choice_names_the_field(value: Any, tools: list[Tool], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_tool_choice(value, tools)
    assert info.value.param == param


# --- the call schema and grammar ---------------------------------------------------------------


def test_call_schema_accepts_exactly_the_calls_of_the_tools() -> None:
    schema = call_schema(TOOLS)
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Oslo"}}, schema)
    jsonschema.validate({"name": "now", "arguments": {}}, schema)
    for wrong in (
        {"name": "get_weather", "arguments": {}},  # city is required
        {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "k"}},
        {"name": "other", "arguments": {}},
        {"name": "now"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def test_tool_schemas_keep_their_own_refs_and_defs() -> None:
    # Two tools both defining "$defs/Place", differently, and one recursive reference to "#".
    first = Tool(
        "a",
        parameters={
            "type": "object",
            "properties": {"p": {"$ref": "#/$defs/Place"}},
            "required": ["p"],
            "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}}},
        },
    )
    second = Tool(
        "b",
        parameters={
            "type": "object",
            "properties": {"p": {"$ref": "#/definitions/Place"}, "next": {"$ref": "#"}},
            "required": ["p"],
            "definitions": {"Place": {"type": "integer"}},
        },
    )
    schema = call_schema([first, second])
    jsonschema.validate({"name": "a", "arguments": {"p": {"city": "Rome"}}}, schema)
    jsonschema.validate({"name": "b", "arguments": {"p": 3, "next": {"p": 4}}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "b", "arguments": {"p": {"city": "Rome"}}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "b", "arguments": {"p": 3, "next": {"p": "x"}}}, schema)
    assert first.parameters["$defs"]  # the caller's schema is left alone


def test_call_grammar_spells_out_each_tool_name_first() -> None:
    grammar = call_grammar(TOOLS)
    assert '"\\"get_weather\\""' in grammar and '"\\"now\\""' in grammar
    single = call_grammar(TOOLS[1:])
    assert "get_weather" not in single
    root = dict(line.split(" ::= ", 1) for line in single.splitlines())["root"]
    assert root.index("name") < root.index("arguments")


def test_call_grammar_names_the_tool_whose_schema_fails() -> None:
    bad = Tool("bad", parameters={"type": "object", "properties": {"x": {"type": "weird"}}})
    with pytest.raises(InvalidRequestError) as info:
        call_grammar([TOOLS[0], bad])
    assert info.value.param == "tools[1].function.parameters"


# --- the prompt --------------------------------------------------------------------------------

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
]


def test_tool_aware_templates_get_objects_and_names() -> None:
    messages, tools = template_inputs(CONVERSATION, TOOLS, template_handles_tools=True)
    assert tools == [t.openai() for t in TOOLS]
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert messages[3]["name"] == "get_weather"  # found through tool_call_id
    assert CONVERSATION[2]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'
    assert "name" not in CONVERSATION[3]


def test_other_templates_get_tools_in_the_system_text_and_plain_turns() -> None:
    messages, tools = template_inputs(CONVERSATION, TOOLS, template_handles_tools=False)
    assert tools is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith("Be brief.\n\nYou can call these tools")
    assert '"name": "get_weather"' in system and '{"name": <tool name>' in system
    call = json.loads(messages[2]["content"])
    assert call == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert messages[3]["content"] == "Result of get_weather:\n-3 C"


def test_no_tools_offered_leaves_the_system_text_alone() -> None:
    messages, tools = template_inputs(CONVERSATION[:2], [], template_handles_tools=False)
    assert tools is None and messages == CONVERSATION[:2]
    messages, _ = template_inputs(CONVERSATION[1:2], TOOLS, template_handles_tools=False)
    assert messages[0]["role"] == "system" and messages[1] == CONVERSATION[1]


def test_odd_but_harmless_shapes_do_not_break_the_prompt_or_grammar() -> None:
    parts = {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "ok"}]}
    messages, _ = template_inputs([parts], [], template_handles_tools=False)
    assert messages == [{"role": "user", "content": "Result of c1:\nok"}]
    junk_defs = Tool("f", parameters={"type": "object", "properties": {}, "$defs": "junk"})
    assert '"\\"f\\""' in call_grammar([junk_defs])
