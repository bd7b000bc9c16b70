"""Anthropic message bodies turned into lms's chat messages and tools."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lms.api.anthropic.request import MessagesRequest, parse_messages
from lms.errors import InvalidParameterError
from lms.inference.tools import ToolChoice

TOOL = {"name": "lookup", "description": "Look a word up.", "input_schema": {"type": "object"}}


def body(**fields: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
        **fields,
    }


def test_tool_use_and_tool_result_blocks_become_calls_and_tool_messages() -> None:
    messages = parse_messages(
        {
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Define 'lamp'."},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"w": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a light"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [{"type": "text", "text": "timeout"}],
                            "is_error": True,
                        },
                        {"type": "text", "text": "Thanks."},
                    ],
                },
            ],
        }
    )
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assistant = messages[2]
    assert assistant["content"] == "Let me check."
    [call] = assistant["tool_calls"]
    assert call["id"] == "toolu_1" and call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"w": 1}
    assert messages[3:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "a light"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: timeout"},
        {"role": "user", "content": "Thanks."},
    ]


def test_a_user_message_of_results_only_adds_no_empty_user_turn() -> None:
    messages = parse_messages(
        {
            "messages": [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
            ]
        }
    )
    assert messages == [{"role": "tool", "tool_call_id": "t", "content": ""}]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, ToolChoice("auto")),
        ({"type": "auto"}, ToolChoice("auto")),
        ({"type": "any"}, ToolChoice("required")),
        ({"type": "tool", "name": "lookup"}, ToolChoice("required", "lookup")),
        ({"type": "none"}, ToolChoice("none")),
    ],
)
def test_tool_choice(choice: Any, expected: ToolChoice) -> None:
    fields = {"tools": [TOOL]} if choice is None else {"tools": [TOOL], "tool_choice": choice}
    parsed = MessagesRequest.parse(body(**fields))
    assert parsed.choice == expected
    assert [tool.name for tool in parsed.tools] == ["lookup"]
    assert (parsed.params.grammar is not None) == (expected.mode == "required")
    assert parsed.offered == ([] if expected.mode == "none" else parsed.tools)


def test_prefill_only_for_a_last_assistant_message_without_calls() -> None:
    last = {"role": "assistant", "content": "Once"}
    assert MessagesRequest.parse(body(messages=[{"role": "user", "content": "x"}, last])).prefill
    call = {"type": "tool_use", "id": "t", "name": "lookup", "input": {}}
    called = {"role": "assistant", "content": [call]}
    parsed = MessagesRequest.parse(body(messages=[{"role": "user", "content": "x"}, called]))
    assert parsed.prefill is None


def test_errors_name_the_field_as_the_client_wrote_it() -> None:
    with pytest.raises(InvalidParameterError) as info:
        MessagesRequest.parse(body(tools=[{"name": "x", "input_schema": {"type": "string"}}]))
    assert info.value.param == "tools[0].input_schema"
    assert "'tools[0].input_schema'" in info.value.message


def test_cache_prompt_is_read_as_on_the_openai_routes() -> None:
    assert MessagesRequest.parse(body()).params.cache_prompt is True
    assert MessagesRequest.parse(body(cache_prompt=False)).params.cache_prompt is False
    with pytest.raises(InvalidParameterError) as info:
        MessagesRequest.parse(body(cache_prompt="off"))
    assert info.value.param == "cache_prompt"
