"""The tool loop of a chat with MCP integrations (README: MCP integrations).

Each round renders the conversation with the offered tools, generates, reads the calls the model
made (:mod:`lms.inference.tool_calls`) and runs them through their MCP sessions; the results go
back into the conversation and the next round starts — until the model answers without a call,
or :data:`MAX_TOOL_ROUNDS` rounds have run tools: then one last round, without tools, answers.

Only tools in the request's ``allowed_tools`` are offered and run. A call of any other tool the
servers know, or with arguments that do not fit the tool's schema, is not run: it becomes an
``invalid_tool_call`` item (and a ``tool_call.failure`` event), and the model reads why.

When the model is not trained for tool use, the first round is constrained by a grammar to one
well-formed call of an offered tool (``force_first``; the request's ``"tool_choice": "auto"``
turns that off); the request's ``max_output_tokens`` bounds each answer, but a forced call may
take up to :data:`FORCED_CALL_TOKENS` (a call cut short is of no use). A round whose calls all
repeat earlier calls runs nothing and ends tool use: small models tend to call again what they
were just answered.

The loop yields :data:`LoopEvent` items for streaming and leaves the ``output`` items (native
API shape, docs/API.md, Native chat) and the conversation's new messages in :class:`LoopResult`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lms import pipeline
from lms.errors import InvalidParameterError
from lms.inference.drafts import Drafts
from lms.inference.engine import GenerationResult, PromptProgress
from lms.inference.generation import DraftStats
from lms.inference.manager import Instance
from lms.inference.sampling import SamplingParams
from lms.inference.tool_calls import (
    CallStarted,
    ContentDelta,
    StreamEvent,
    ToolCall,
    ToolCallStream,
)
from lms.inference.tools import Tool, call_grammar
from lms.mcp.sessions import McpConnection
from lms.remote.models import RemoteModel

if TYPE_CHECKING:
    import mcp_types

log = logging.getLogger("lms.mcp")

#: Rounds whose tool calls run, at most; then one more round answers without tools.
MAX_TOOL_ROUNDS = 6
#: Tokens a forced call may take even when the request's limit is lower.
FORCED_CALL_TOKENS = 256


# --- the tools of one request --------------------------------------------------------------------


@dataclass(frozen=True)
class OfferedTool:
    tool: Tool
    connection: McpConnection


class Toolbox:
    """The tools one request may use and the sessions behind them. Use as ``async with``:
    per-request sessions close at the end; mcp.json servers stay up for the next request,
    released (their idle time starts) when this one ends."""

    def __init__(self) -> None:
        self.offered: dict[str, OfferedTool] = {}
        #: Tools the servers offer beyond ``allowed_tools``: recognised in output, never run.
        self.withheld: dict[str, OfferedTool] = {}
        self._owned: list[McpConnection] = []
        self._held: list[McpConnection] = []

    def add(
        self,
        connection: McpConnection,
        tools: Sequence[mcp_types.Tool],
        allowed: Sequence[str] | None,
        *,
        owned: bool = False,
    ) -> None:
        """Offer ``connection``'s tools named in ``allowed`` (all when None). ``owned``: the
        session belongs to this request and closes with it; otherwise it comes held (see
        :meth:`McpConnection.hold`) and the toolbox releases it."""
        (self._owned if owned else self._held).append(connection)
        for mcp_tool in tools:
            name = mcp_tool.name
            known = self.offered.get(name) or self.withheld.get(name)
            if known is not None:
                if known.connection is not connection:
                    log.warning(
                        "two MCP servers of one request offer a tool %r: %s's is left out",
                        name,
                        connection.label,
                    )
                elif allowed is None or name in allowed:  # the same server named twice
                    self.withheld.pop(name, None)
                    self.offered[name] = known
                continue
            schema = mcp_tool.input_schema if isinstance(mcp_tool.input_schema, dict) else {}
            tool = Tool(name=name, description=mcp_tool.description, parameters=schema)
            target = self.offered if allowed is None or name in allowed else self.withheld
            target[name] = OfferedTool(tool, connection)

    @property
    def tools(self) -> list[Tool]:
        return [entry.tool for entry in self.offered.values()]

    @property
    def recognised(self) -> list[Tool]:
        return self.tools + [entry.tool for entry in self.withheld.values()]

    async def __aenter__(self) -> Toolbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        held, self._held = self._held, []
        for connection in held:
            connection.release()
        owned, self._owned = self._owned, []
        for connection in owned:
            await connection.close()


# --- events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    fraction: float


@dataclass(frozen=True)
class MessageStart:
    pass


@dataclass(frozen=True)
class MessageDelta:
    content: str


@dataclass(frozen=True)
class MessageEnd:
    content: str


@dataclass(frozen=True)
class CallStart:
    tool: str
    provider_info: dict[str, str]


@dataclass(frozen=True)
class CallArguments:
    tool: str
    arguments: dict[str, Any]
    provider_info: dict[str, str]


@dataclass(frozen=True)
class CallSuccess:
    tool: str
    arguments: dict[str, Any]
    output: str
    provider_info: dict[str, str]
    #: The MCP result, for APIs that show it their own way.
    result: mcp_types.CallToolResult


@dataclass(frozen=True)
class CallFailure:
    reason: str
    metadata: dict[str, Any]


LoopEvent = (
    Progress
    | MessageStart
    | MessageDelta
    | MessageEnd
    | CallStart
    | CallArguments
    | CallSuccess
    | CallFailure
)


@dataclass
class LoopResult:
    """What the loop produced: ``output`` items and the conversation's new messages."""

    output: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    generation_seconds: float = 0.0
    time_to_first_token: float | None = None
    finish_reason: str = "stop"
    rounds: int = 0
    #: Draft token counts summed over the rounds (the model: the last round's); None while no
    #: round had speculation on.
    draft: DraftStats | None = None

    @property
    def content(self) -> str:
        """The text of the last message item (the answer)."""
        for item in reversed(self.output):
            if item["type"] == "message":
                return str(item["content"])
        return ""

    @property
    def tokens_per_second(self) -> float:
        if not self.generation_seconds:
            return 0.0
        return self.completion_tokens / self.generation_seconds


# --- the loop ------------------------------------------------------------------------------------


class ToolLoop:
    """Run a chat with tools. Construct, then iterate :meth:`run`; read :attr:`result`."""

    def __init__(
        self,
        instance: Instance | RemoteModel,
        toolbox: Toolbox,
        params: SamplingParams,
        *,
        force_first: bool,
        max_tool_rounds: int = MAX_TOOL_ROUNDS,
        record: pipeline.Recorder = pipeline.no_record,
        drafts: Drafts | None = None,
    ) -> None:
        """``record`` counts each round's generation (the request's token, say); ``drafts``
        says which draft models the caller may name (see :func:`lms.pipeline.start`)."""
        self.instance = instance
        self.record = record
        self.drafts = drafts
        self.toolbox = toolbox
        self.params = params
        self.force_first = force_first
        self.max_tool_rounds = max_tool_rounds
        self.result = LoopResult()
        self._made: set[tuple[str, str]] = set()

    async def run(self, messages: list[dict[str, Any]]) -> AsyncGenerator[LoopEvent, None]:
        """Rounds until the model answers; ``messages`` is the conversation so far."""
        conversation = list(messages)
        tool_rounds = 0
        tools_on = bool(self.toolbox.offered)
        try:
            while True:
                forced = tools_on and self.force_first and self.result.rounds == 0
                calls: list[ToolCall] = []
                async for event in self._round(conversation, calls, tools_on, forced):
                    yield event
                if not calls:
                    return
                if all(_signature(call) in self._made for call in calls):
                    log.info("the model repeated its tool calls: it answers without tools now")
                    conversation.pop()  # the repeated calls are not part of the conversation
                    tools_on = False
                    continue
                async for event in self._run_calls(conversation, calls, announced=forced):
                    yield event
                tool_rounds += 1
                if tool_rounds >= self.max_tool_rounds:
                    tools_on = False
        finally:
            self.result.messages = conversation[len(messages) :]

    async def _round(
        self,
        conversation: list[dict[str, Any]],
        calls: list[ToolCall],
        tools_on: bool,
        forced: bool,
    ) -> AsyncIterator[LoopEvent]:
        """One generation: stream its text, leave its calls in ``calls``, and add the
        assistant's turn to ``conversation``."""
        instance = self.instance
        offered = self.toolbox.tools if tools_on else []
        # MCP servers' schemas become a grammar off the event loop (bounded: docs/LIMITS.md).
        grammar = await asyncio.to_thread(_forcing_grammar, offered) if forced else None
        max_tokens = self.params.max_tokens
        if grammar is not None and max_tokens is not None:
            max_tokens = max(max_tokens, FORCED_CALL_TOKENS)  # a call cut short is of no use
        params = dataclasses.replace(self.params, grammar=grammar, max_tokens=max_tokens)
        stream = ToolCallStream(
            self.toolbox.recognised if tools_on else [], forced=grammar is not None
        )
        message = _Message(self.result)
        run = await pipeline.start(
            instance,
            pipeline.ChatPrompt(conversation, offered),
            params,
            record=self.record,
            drafts=self.drafts,
        )
        self.result.rounds += 1
        try:
            async for item in run.events():
                if isinstance(item, PromptProgress):
                    yield Progress(item.fraction)
                    continue
                for event in stream.feed(item):
                    for out in self._translate(event, message, announce=grammar is not None):
                        yield out
            for event in stream.finish():
                for out in self._translate(event, message, announce=grammar is not None):
                    yield out
            for out in message.end():
                yield out
        finally:
            run.close()
            self._count(run.prompt_tokens, run.result)
        calls.extend(stream.calls)
        turn: dict[str, Any] = {"role": "assistant", "content": message.round_text or None}
        if calls:
            turn["tool_calls"] = [call.openai() for call in calls]
        else:
            turn["content"] = message.round_text
        conversation.append(turn)

    def _translate(
        self, event: StreamEvent, message: _Message, *, announce: bool
    ) -> list[LoopEvent]:
        if isinstance(event, ContentDelta):
            return message.add(event.text)
        if isinstance(event, CallStarted):
            out = message.end()
            entry = self.toolbox.offered.get(event.name)
            if announce and entry is not None:
                out.append(CallStart(event.name, entry.connection.provider_info))
            return out
        return []  # arguments are announced whole, once the call is complete

    def _count(self, prompt_tokens: int, outcome: GenerationResult | None) -> None:
        result = self.result
        result.prompt_tokens += prompt_tokens
        if outcome is None:
            return
        result.completion_tokens += outcome.completion_tokens
        result.cached_tokens += outcome.cached_tokens
        result.generation_seconds += outcome.generation_seconds
        result.finish_reason = outcome.finish_reason
        if result.time_to_first_token is None:
            result.time_to_first_token = outcome.time_to_first_token
        if outcome.draft is not None:
            result.draft = _summed(result.draft, outcome.draft)

    async def _run_calls(
        self, conversation: list[dict[str, Any]], calls: list[ToolCall], *, announced: bool
    ) -> AsyncIterator[LoopEvent]:
        """Run the calls of a round (those it may), and add their results to the conversation."""
        budget = max(2_000, self.instance.context_length * 2)  # chars of a result the model reads
        for call in calls:
            entry = self.toolbox.offered.get(call.name)
            if entry is None:
                reason = f"the tool {call.name!r} is not allowed in this request"
                failure = CallFailure(reason, {"type": "invalid_name", "tool_name": call.name})
                feedback = f"Error: {reason}. Tools you may call: {', '.join(self.toolbox.offered)}"
            else:
                provider = entry.connection.provider_info
                if not announced:
                    yield CallStart(call.name, provider)
                arguments, problem = _arguments(call, entry.tool.parameters)
                if problem is None:
                    yield CallArguments(call.name, arguments, provider)
                    result = await entry.connection.call_tool(call.name, arguments)
                    output = json.dumps(
                        [
                            block.model_dump(mode="json", by_alias=True, exclude_none=True)
                            for block in result.content
                        ],
                        ensure_ascii=False,
                    )
                    self._made.add(_signature(call))
                    self.result.output.append(
                        {
                            "type": "tool_call",
                            "tool": call.name,
                            "arguments": arguments,
                            "output": output,
                            "provider_info": provider,
                        }
                    )
                    yield CallSuccess(call.name, arguments, output, provider, result)
                    conversation.append(_tool_turn(call, _result_text(result, budget)))
                    continue
                reason = f"invalid arguments for the tool {call.name!r}: {problem}"
                failure = CallFailure(
                    reason,
                    {
                        "type": "invalid_arguments",
                        "tool_name": call.name,
                        "arguments": arguments,
                        "provider_info": provider,
                    },
                )
                feedback = f"Error: {reason}"
            self.result.output.append(
                {
                    "type": "invalid_tool_call",
                    "reason": failure.reason,
                    "metadata": failure.metadata,
                }
            )
            yield failure
            conversation.append(_tool_turn(call, feedback))


class _Message:
    """The message item a round is streaming, if any; its text goes to ``result.output``."""

    def __init__(self, result: LoopResult) -> None:
        self._result = result
        self._parts: list[str] | None = None
        self._round: list[str] = []

    @property
    def round_text(self) -> str:
        """All the text of the round (its messages joined)."""
        return "".join(self._round).strip()

    def add(self, text: str) -> list[LoopEvent]:
        events: list[LoopEvent] = []
        if self._parts is None:
            text = text.lstrip()
            if not text:  # no message item for blank text before a call
                return events
            self._parts = []
            events.append(MessageStart())
        self._parts.append(text)
        self._round.append(text)
        events.append(MessageDelta(text))
        return events

    def end(self) -> list[LoopEvent]:
        if self._parts is None:
            return []
        content, self._parts = "".join(self._parts), None
        self._result.output.append({"type": "message", "content": content})
        return [MessageEnd(content)]


def _signature(call: ToolCall) -> tuple[str, str]:
    try:
        arguments = json.dumps(json.loads(call.arguments), sort_keys=True)
    except ValueError:
        arguments = call.arguments
    return call.name, arguments


def _arguments(call: ToolCall, schema: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The call's arguments, and what is wrong with them for ``schema`` (None: nothing)."""
    from jsonschema import SchemaError
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        return {}, "they are not valid JSON (the output may have been cut short)"
    if not isinstance(arguments, dict):
        return {}, "they must be a JSON object"
    try:
        validator = validator_for(schema)(schema)
        error = best_match(validator.iter_errors(arguments))
    except SchemaError:  # the server's schema is broken: the server judges its arguments
        return arguments, None
    if error is None:
        return arguments, None
    where = "/".join(str(part) for part in error.absolute_path)
    return arguments, f"{where + ': ' if where else ''}{error.message}"


def _forcing_grammar(tools: list[Tool]) -> str | None:
    """The grammar of one call of ``tools``, over those whose schemas convert (None if none)."""
    try:
        return call_grammar(tools)
    except InvalidParameterError:
        usable = []
        for tool in tools:
            try:
                call_grammar([tool])
                usable.append(tool)
            except InvalidParameterError:
                log.warning("the schema of the MCP tool %r cannot be a grammar", tool.name)
        if not usable:
            return None
        try:  # each fits alone, yet together they may cross the total bound
            return call_grammar(usable)
        except InvalidParameterError:
            log.warning("the MCP tools' schemas together are too large for a grammar")
            return None


def _result_text(result: mcp_types.CallToolResult, budget: int) -> str:
    """A tool result as the model reads it: text parts as they are, others as JSON; cut to
    ``budget`` characters."""
    import mcp_types

    parts = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        else:
            parts.append(
                json.dumps(block.model_dump(mode="json", by_alias=True, exclude_none=True))
            )
    text = "\n".join(parts)
    if result.is_error and not text.startswith("Error"):
        text = f"Error: {text}"
    if len(text) > budget:
        text = text[:budget] + "\n[… cut: the result was longer]"
    return text


def _tool_turn(call: ToolCall, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": content}


def _summed(total: DraftStats | None, more: DraftStats) -> DraftStats:
    """``total`` with the counts of ``more`` added; the model is ``more``'s (the later round)."""
    if total is None:
        return DraftStats(more.model, more.total, more.accepted, more.rejected, more.ignored)
    return DraftStats(
        more.model,
        total.total + more.total,
        total.accepted + more.accepted,
        total.rejected + more.rejected,
        total.ignored + more.ignored,
    )
