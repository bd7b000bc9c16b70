"""Reading tool calls from model output: whole texts in every accepted format, and streams."""

from __future__ import annotations

import json

import pytest

from lms.inference.tool_calls import (
    ArgumentsDelta,
    CallStarted,
    ContentDelta,
    StreamEvent,
    ToolCallStream,
    parse_tool_calls,
)
from lms.inference.tools import Tool

TOOLS = [Tool("get_weather"), Tool("now")]
OSLO = {"city": "Oslo"}


def calls(text: str) -> tuple[str, list[tuple[str, dict[str, object]]]]:
    content, found = parse_tool_calls(text, TOOLS)
    for call in found:
        assert call.id.startswith("call_") and len(call.id) == 29
    return content, [(c.name, json.loads(c.arguments)) for c in found]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
        '  {"name":"get_weather","arguments":{"city":"Oslo"}}\n',
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}',
        '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
        '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
        '[TOOL_REQUEST]{"name": "get_weather", "arguments": {"city": "Oslo"}}[END_TOOL_REQUEST]',
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
    ],
)
def test_one_call_in_every_format(text: str) -> None:
    assert calls(text) == ("", [("get_weather", OSLO)])


def test_several_calls_and_text_around_them() -> None:
    text = 'Checking.\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n{"name": "now"}'
    assert calls(text) == ("Checking.", [("get_weather", OSLO), ("now", {})])
    wrapped = (
        "Let me look.<tool_call>"
        '{"name": "now", "arguments": {}}</tool_call><tool_call>'
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call> Done.'
    )
    assert calls(wrapped) == ("Let me look. Done.", [("now", {}), ("get_weather", OSLO)])


def test_an_unterminated_wrapper_still_counts() -> None:
    assert calls('<tool_call>{"name": "now", "arguments": {}}') == ("", [("now", {})])


@pytest.mark.parametrize(
    "text",
    [
        "It is sunny in Oslo.",
        '{"name": "get_stock", "arguments": {}}',  # not an offered tool
        '{"name": "now", "arguments": [1, 2]}',  # arguments not an object
        '{"name": "now", "arguments": {"a": 1}',  # cut short
        '{"name": "now", "arguments": {}} and then some prose',
        '{"answer": 42}',
        '{"name": {"not": "a string"}, "arguments": {}}',
        '<tool_call>{"name": "nope"}</tool_call>',
        '[{"name": "now"}, "junk"]',
    ],
)
def test_anything_else_stays_content_unchanged(text: str) -> None:
    assert calls(text) == (text, [])


def test_without_tools_nothing_is_a_call() -> None:
    text = '{"name": "now", "arguments": {}}'
    assert parse_tool_calls(text, []) == (text, [])


# --- streaming ---------------------------------------------------------------------------------


def run(stream: ToolCallStream, pieces: list[str]) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for piece in pieces:
        events += stream.feed(piece)
    return events + stream.finish()


def content(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


def arguments(events: list[StreamEvent], index: int = 0) -> str:
    return "".join(e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == index)


def test_prose_streams_as_it_comes() -> None:
    stream = ToolCallStream(TOOLS)
    assert stream.feed("It is") == [ContentDelta("It is")]
    assert stream.feed(" sunny.") == [ContentDelta(" sunny.")]
    assert stream.finish() == []
    assert stream.calls == []


def test_possible_markers_are_held_until_they_are_not() -> None:
    stream = ToolCallStream(TOOLS)
    assert stream.feed("a <tool") == [ContentDelta("a ")]
    assert stream.feed("s> b\n  ") == [ContentDelta("<tools> b\n")]  # may open a JSON line
    assert stream.feed("c") == [ContentDelta("  c")]


def test_a_json_call_after_prose_is_held_then_becomes_a_call() -> None:
    pieces = ["Sure.", "\n", '{"name": "get', '_weather", "arguments": {"city": "Oslo"}}']
    stream = ToolCallStream(TOOLS)
    events = run(stream, pieces)
    assert content(events) == "Sure.\n"
    started = [e for e in events if isinstance(e, CallStarted)]
    assert [(e.index, e.name) for e in started] == [(0, "get_weather")]
    assert started[0].call_id == stream.calls[0].id
    assert json.loads(arguments(events)) == OSLO
    assert events.index(started[0]) < events.index(
        next(e for e in events if isinstance(e, ArgumentsDelta))
    )


def test_held_json_that_is_no_call_comes_out_as_content() -> None:
    text = '{"answer": 42}\nThat is all.'
    events = run(ToolCallStream(TOOLS), list(text))
    assert content(events) == text
    assert not any(isinstance(e, CallStarted) for e in events)


def test_two_wrapped_calls_get_indexes() -> None:
    text = '<tool_call>{"name": "now"}</tool_call>\n<tool_call>{"name": "now"}</tool_call>'
    stream = ToolCallStream(TOOLS)
    events = run(stream, [text[i : i + 7] for i in range(0, len(text), 7)])
    assert [(e.index, e.name) for e in events if isinstance(e, CallStarted)] == [
        (0, "now"),
        (1, "now"),
    ]
    assert len({call.id for call in stream.calls}) == 2


def test_forced_call_streams_its_arguments_in_fragments() -> None:
    text = '{ "name": "get_weather", "arguments": { "city": "Oslo \\"}\\" town" } }'
    stream = ToolCallStream(TOOLS, forced=True)
    events = run(stream, [text[i : i + 3] for i in range(0, len(text), 3)])
    assert content(events) == ""
    assert isinstance(events[0], CallStarted) and events[0].name == "get_weather"
    fragments = [e for e in events if isinstance(e, ArgumentsDelta)]
    assert len(fragments) > 3
    joined = arguments(events)
    assert json.loads(joined) == {"city": 'Oslo "}" town'}
    assert joined == '{ "city": "Oslo \\"}\\" town" }'  # nothing of the wrapper's closing brace
    assert [(c.name, c.arguments) for c in stream.calls] == [("get_weather", joined)]


def test_forced_call_cut_short_keeps_what_came() -> None:
    stream = ToolCallStream(TOOLS, forced=True)
    events = run(stream, ['{"name": "now", "arguments": {"a": [1,'])
    assert arguments(events) == '{"a": [1,'
    assert stream.calls[0].arguments == '{"a": [1,'


def test_forced_output_that_never_became_a_call_is_content() -> None:
    stream = ToolCallStream(TOOLS, forced=True)
    events = run(stream, ['{"na', "me"])
    assert content(events) == '{"name'
    assert stream.calls == []


def test_without_tools_everything_is_content() -> None:
    text = '{"name": "now", "arguments": {}}'
    stream = ToolCallStream([])
    assert run(stream, [text]) == [ContentDelta(text)]
