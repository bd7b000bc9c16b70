"""Tool calls in model output: reading them from the whole text or as it streams.

The format a model is asked for is described in :mod:`tools`: one JSON object per call,
``{"name": ..., "arguments": {...}}``. Read here: that object (alone, several, in a list, after
some text, in a ```json fence) and the usual native wrappers — ``<tool_call>…</tool_call>``
(Qwen, Hermes), ``[TOOL_REQUEST]…[END_TOOL_REQUEST]`` (LM Studio), ``[TOOL_CALLS][…]``
(Mistral) — with ``arguments`` or ``parameters``. Only a call of an offered tool counts; any
other text stays content, unchanged.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lms.inference.tools import Tool


def new_call_id() -> str:
    """A fresh ``call_…`` id for a tool call."""
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ToolCall:
    """A call the model made; ``arguments`` is JSON text (an object)."""

    name: str
    arguments: str
    id: str = field(default_factory=new_call_id)

    def openai(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls[]`` entry."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


# --- parsing -----------------------------------------------------------------------------------

_WRAPPERS = (
    (re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S), "<tool_call>"),
    (re.compile(r"\[TOOL_REQUEST\](.*?)(?:\[END_TOOL_REQUEST\]|$)", re.S), "[TOOL_REQUEST]"),
    (re.compile(r"\[TOOL_CALLS\](.*)$", re.S), "[TOOL_CALLS]"),
)
_MARKERS = tuple(marker for _, marker in _WRAPPERS)
_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?\s*```\s*$", re.S)


def parse_tool_calls(text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
    """Split model output into content and calls of ``tools``. No call found: the whole text
    is the content, unchanged."""
    names = {tool.name for tool in tools}
    if not names:
        return text, []
    for pattern, _ in _WRAPPERS:
        matches = list(pattern.finditer(text))
        if not matches:
            continue
        calls: list[ToolCall] = []
        for match in matches:
            found = _calls_in(match.group(1), names)
            if found is None:
                break
            calls += found
        else:
            return pattern.sub("", text).strip(), calls
    # Bare JSON: from the start of some line to the end of the text.
    starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
    for start in starts:
        if not text[start:].lstrip().startswith(("{", "[", "```")):
            continue
        found = _calls_in(text[start:], names)
        if found:
            return text[:start].strip(), found
    return text, []


def _calls_in(text: str, names: set[str]) -> list[ToolCall] | None:
    """The calls ``text`` holds entirely (JSON objects or lists of them, maybe in a fence);
    None when anything else is there or a call names an unknown tool."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    position = 0
    while position < len(text):
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            return None
        for item in value if isinstance(value, list) else [value]:
            call = _call(item, names)
            if call is None:
                return None
            calls.append(call)
        position = end
        while position < len(text) and text[position] in " \t\r\n,;":
            position += 1
    return calls or None


def _call(item: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):  # OpenAI's own shape, as some models echo it
        item = item["function"]
    name = item.get("name")
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(arguments, dict):
        return None
    return ToolCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False))


# --- streaming ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentDelta:
    """More answer text."""

    text: str


@dataclass(frozen=True)
class CallStarted:
    """Call number ``index`` begins: its id and function name are known."""

    index: int
    call_id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    """More of call ``index``'s arguments (JSON text; the fragments join into an object)."""

    index: int
    text: str


StreamEvent = ContentDelta | CallStarted | ArgumentsDelta

_FORCED_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_OPENERS = ("{", "[", "```", *_MARKERS)


class ToolCallStream:
    """Turns streamed model output into content deltas and tool-call events.

    Content streams as it comes, except from where a call may begin (a marker, or a line that
    opens JSON or a fence): that part is held to the end and then parsed, becoming calls — or
    content after all. With ``forced`` (a grammar guarantees exactly one call in this module's
    format, name first) the call starts as soon as its name is complete and its arguments stream
    fragment by fragment.
    """

    def __init__(self, tools: Sequence[Tool], *, forced: bool = False) -> None:
        self.tools = list(tools)
        self.calls: list[ToolCall] = []
        self._forced = forced
        self._text = ""  # everything fed
        self._emitted = 0  # content sent up to here (unforced)
        self._held_from: int | None = None
        self._arguments_from: int | None = None  # forced: where the arguments text begins
        self._arguments_end: int | None = None
        self._scanned = 0  # forced: arguments text sent up to here
        self._scan = _JsonScan()

    @property
    def text(self) -> str:
        """All the raw output fed so far."""
        return self._text

    def feed(self, piece: str) -> list[StreamEvent]:
        self._text += piece
        if not self.tools:
            return self._content(len(self._text))
        if self._forced:
            return self._feed_forced()
        if self._held_from is not None:
            return []
        start = self._call_start()
        if start is not None:
            self._held_from = start
            return self._content(start)
        return self._content(self._safe_end())

    def finish(self) -> list[StreamEvent]:
        """Events for what is left at the end of generation; ``calls`` is then complete."""
        if self._forced and self._arguments_from is not None:
            arguments = self._text[self._arguments_from : self._arguments_end].strip()
            self.calls[0] = ToolCall(self.calls[0].name, arguments, self.calls[0].id)
            return []
        if self._forced:  # the call never began (cut short): read the text like any other
            self._forced, self._held_from = False, 0
        held_from = self._emitted if self._held_from is None else self._held_from
        events = self._content(held_from)
        rest, calls = parse_tool_calls(self._text[held_from:], self.tools)
        if not calls:
            return events + self._content(len(self._text))
        self._emitted = len(self._text)
        if rest:
            events.append(ContentDelta(rest))
        for call in calls:
            index = len(self.calls)
            self.calls.append(call)
            events.append(CallStarted(index, call.id, call.name))
            events.append(ArgumentsDelta(index, call.arguments))
        return events

    def _content(self, end: int) -> list[StreamEvent]:
        if end <= self._emitted:
            return []
        text, self._emitted = self._text[self._emitted : end], end
        return [ContentDelta(text)]

    def _call_start(self) -> int | None:
        """Where a call may begin in the unsent text: a marker, or JSON/fence opening a line."""
        text, origin = self._text, self._emitted
        candidates = [i for i in (text.find(m, origin) for m in _MARKERS) if i >= 0]
        line = origin
        while line < len(text):
            if line == 0 or text[line - 1] == "\n":
                stripped = text[line:].lstrip(" \t")
                if stripped.startswith(("{", "[", "```")):
                    candidates.append(line)
                    break
            newline = text.find("\n", line)
            if newline < 0:
                break
            line = newline + 1
        return min(candidates, default=None)

    def _safe_end(self) -> int:
        """How far content can go out now: not into what could still grow into a call start."""
        text = self._text
        end = len(text)
        last_line = text.rfind("\n") + 1
        if last_line >= self._emitted and not text[last_line:].strip(" \t"):
            end = last_line  # an empty line start: a JSON line may follow
        for marker in _OPENERS:
            for n in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:n]):
                    end = min(end, len(text) - n)
                    break
        return max(end, self._emitted)

    def _feed_forced(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self._arguments_from is None:
            head = _FORCED_HEAD.match(self._text)
            if head is None:
                return events
            name = json.loads(f'"{head.group(1)}"')
            self._arguments_from = self._scanned = head.end()
            self.calls.append(ToolCall(name, ""))
            events.append(CallStarted(0, self.calls[0].id, name))
        if self._arguments_end is None:
            start = self._scanned
            if not self._scan.started:  # whitespace before the object is not part of it
                while start < len(self._text) and self._text[start].isspace():
                    start += 1
                self._arguments_from = start
            self._arguments_end = self._scan.feed(self._text, start)
            self._scanned = self._arguments_end or len(self._text)
            if self._scanned > start:
                events.append(ArgumentsDelta(0, self._text[start : self._scanned]))
        return events


class _JsonScan:
    """Finds where one JSON value (an object) ends in text that arrives piece by piece."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.started = False

    def feed(self, text: str, start: int) -> int | None:
        """Scan ``text[start:]``; the index just past the value's end, or None (not yet)."""
        for i in range(start, len(text)):
            char = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
                self.started = True
            elif char in "}]":
                self.depth -= 1
                if self.started and self.depth == 0:
                    return i + 1
        return None
