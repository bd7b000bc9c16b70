"""What ``POST /v1/chat/completions`` adds to plain text: ``tools``, ``tool_choice`` and
``response_format`` (docs/API.md, Chat completions), as a :class:`ChatPlan` its route follows
(``lms/api/openai/completions.py``), and the SDK's ``predict`` too.

The plan renders the prompt (tools offered the way the model's template can take them), carries
the grammar of the request (a forced tool call, or the response format), and turns the output
into OpenAI's ``message`` or streamed ``delta``s: ``tool_calls`` with ``finish_reason
"tool_calls"`` when the model called a tool, the raw text as ``content`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lms.api import bodies
from lms.inference.structured import response_format_grammar
from lms.inference.tool_calls import (
    ArgumentsDelta,
    CallStarted,
    ContentDelta,
    StreamEvent,
    ToolCallStream,
    parse_tool_calls,
)
from lms.inference.tools import (
    Tool,
    ToolChoice,
    call_grammar,
    parse_tool_choice,
    parse_tools,
)


@dataclass(frozen=True)
class ChatPlan:
    """The tools, tool choice and output grammar of one chat-completions request."""

    tools: list[Tool]
    choice: ToolChoice
    grammar: str | None

    @classmethod
    def read(cls, body: Mapping[str, Any]) -> ChatPlan:
        """Validate ``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format``
        (each bad field is a 400 naming it) and build the grammar they ask for, within the
        bounds of ``docs/LIMITS.md``. CPU work: the routes call it on a worker thread."""
        tools = parse_tools(body.get("tools"))
        choice = parse_tool_choice(body.get("tool_choice"), tools)
        bodies.get(body, "parallel_tool_calls", bool)  # accepted; a forced call is one call
        output = response_format_grammar(body.get("response_format"))
        forced = choice.forced(tools)
        # A forced call is the whole answer: the response format (for content) has no say.
        fields = [f"tools[{tools.index(tool)}].function.parameters" for tool in forced]
        grammar = call_grammar(forced, fields=fields) if forced else output
        return cls(tools=tools, choice=choice, grammar=grammar)

    @property
    def offered(self) -> list[Tool]:
        return self.choice.offered(self.tools)

    def message(self, text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
        """The non-streamed ``message`` and its finish reason."""
        content, calls = parse_tool_calls(text, self.offered)
        if not calls:
            return {"role": "assistant", "content": text}, finish_reason
        message = {
            "role": "assistant",
            "content": content or None,
            "tool_calls": [call.openai() for call in calls],
        }
        return message, "tool_calls"

    def stream(self) -> ToolCallStream:
        """Splits the streamed output into content and tool calls."""
        return ToolCallStream(self.offered, forced=bool(self.choice.forced(self.tools)))


def delta(event: StreamEvent) -> dict[str, Any]:
    """The chunk ``delta`` of one stream event: content, the start of a call (id, name, empty
    arguments), or a fragment of its arguments (clients join fragments by ``index``)."""
    if isinstance(event, ContentDelta):
        return {"content": event.text}
    if isinstance(event, CallStarted):
        call = {
            "index": event.index,
            "id": event.call_id,
            "type": "function",
            "function": {"name": event.name, "arguments": ""},
        }
        return {"tool_calls": [call]}
    assert isinstance(event, ArgumentsDelta)
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}
