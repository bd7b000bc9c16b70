"""``POST /api/v1/chat``: LM Studio's native chat, stateful and streamed (docs/API.md, Native chat).

The conversation is rebuilt from the stored response named by ``previous_response_id``; a stored
response belongs to the token that made it. Streaming sends ``chat.start`` first and ``chat.end``
(carrying the full response body) last, always — an error in between is an ``error`` event.

``integrations`` (MCP servers, README: MCP integrations) pass their gates before anything else
happens, and their servers are connected before the response starts; the tool loop
(:mod:`lms.mcp.loop`) then puts ``tool_call`` / ``invalid_tool_call`` items in ``output`` and
``tool_call.*`` events in the stream."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lms import pipeline, protocol
from lms.api import bodies, drafts, instances, integrations
from lms.api.integrations import Integration
from lms.api.security import TOKEN, record_generation
from lms.api.sse import EventStream
from lms.api.state import CHATS
from lms.errors import InvalidParameterError, LmsError
from lms.inference.engine import PromptProgress
from lms.inference.generation import DraftStats
from lms.inference.manager import Instance
from lms.inference.sampling import SamplingParams
from lms.mcp import loop as tool_loop
from lms.mcp.loop import Toolbox
from lms.remote.models import RemoteModel, unsupported

routes = web.RouteTableDef()

_REASONING = ("off", "low", "medium", "high", "on")


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    new_messages: list[dict[str, Any]]
    params: SamplingParams
    stream: bool
    store: bool
    context_length: int | None
    ttl: int | None
    integrations: list[Integration] = field(default_factory=list)
    tool_choice: str | None = None


@dataclass
class ChatResult:
    """What the response body is built from."""

    instance_id: str
    content: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_per_second: float = 0.0
    time_to_first_token: float = 0.0
    load_time: float | None = None
    response_id: str | None = None
    error: LmsError | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``output`` of a chat with tools (the tool loop's items); None: the one message.
    items: list[dict[str, Any]] | None = None
    #: What speculative decoding did (None: it was off, or the answer came from the tool loop).
    draft: DraftStats | None = None

    def body(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "total_output_tokens": self.output_tokens,
            "reasoning_output_tokens": 0,
            "tokens_per_second": round(self.tokens_per_second, 3),
            "time_to_first_token_seconds": round(self.time_to_first_token, 3),
        }
        if self.load_time is not None:
            stats["model_load_time_seconds"] = round(self.load_time, 3)
        stats.update(drafts.native_stats(self.draft))
        output = [{"type": "message", "content": self.content}] if self.content else []
        body: dict[str, Any] = {
            "model_instance_id": self.instance_id,
            "output": output if self.items is None else self.items,
            "stats": stats,
        }
        if self.response_id:
            body["response_id"] = self.response_id
        return body


def _input_messages(value: Any) -> list[dict[str, Any]]:
    """``input``: a string, or items ``{"type": "text", "content"}`` (``message`` accepted)."""
    if isinstance(value, str):
        if not value:
            raise InvalidParameterError("'input' must not be empty", param="input")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidParameterError(
            "'input' must be a string or a non-empty array of input items", param="input"
        )
    parts: list[str] = []
    for i, item in enumerate(value):
        where = f"input.{i}"
        if not isinstance(item, dict):
            raise InvalidParameterError(f"'{where}' must be an object", param=where)
        kind = item.get("type")
        if kind == "image":
            raise InvalidParameterError(
                f"'{where}' is an image, but this model has no vision support", param=where
            )
        if kind not in ("text", "message"):
            raise InvalidParameterError(
                f"'{where}.type' must be 'text' or 'image'", param=f"{where}.type"
            )
        content = item.get("content")
        if not isinstance(content, str):
            raise InvalidParameterError(
                f"'{where}.content' is required and must be a string", param=f"{where}.content"
            )
        parts.append(content)
    return [{"role": "user", "content": "\n\n".join(parts)}]


async def _parse(request: web.Request, body: Mapping[str, Any]) -> ChatRequest:
    model = bodies.require(body, "model", str)
    if "input" not in body:
        raise InvalidParameterError("'input' is required", param="input")
    new_messages = _input_messages(body["input"])
    system = bodies.get(body, "system_prompt", str)
    reasoning = bodies.get(body, "reasoning", str)
    if reasoning is not None and reasoning not in _REASONING:
        raise InvalidParameterError(
            f"'reasoning' must be one of {', '.join(_REASONING)}", param="reasoning"
        )
    if reasoning not in (None, "off"):
        raise InvalidParameterError(
            f"'reasoning' {reasoning!r} is not supported: the models lms serves have no"
            " reasoning mode (use 'off' or leave it out)",
            param="reasoning",
        )
    wanted = integrations.parse_integrations(body.get("integrations"))
    tool_choice = bodies.get(body, "tool_choice", str)
    if tool_choice not in (None, "auto", "required"):
        raise InvalidParameterError(
            "'tool_choice' must be 'auto' (the model may answer at once) or 'required' (its"
            " first answer is a call of an allowed tool)",
            param="tool_choice",
        )
    context_length = bodies.get(body, "context_length", int)
    if context_length is not None and context_length < 16:
        raise InvalidParameterError("'context_length' must be at least 16", param="context_length")
    history: list[dict[str, Any]] = []
    previous = bodies.get(body, "previous_response_id", str)
    if previous is not None:
        owner = _owner(request)
        stored = await asyncio.to_thread(request.app[CHATS].load, previous, owner)
        history = stored.messages
    if system is not None:
        history = [m for m in history if m.get("role") != "system"]
        history.insert(0, {"role": "system", "content": system})
    return ChatRequest(
        model=model,
        messages=history + new_messages,
        new_messages=new_messages,
        params=bodies.sampling(body, max_token_fields=("max_output_tokens",)),
        stream=bool(bodies.get(body, "stream", bool, False)),
        store=bool(bodies.get(body, "store", bool, True)),
        context_length=context_length,
        ttl=bodies.get(body, "ttl", int),
        integrations=wanted,
        tool_choice=tool_choice,
    )


def _owner(request: web.Request) -> str | None:
    record = request.get(TOKEN)
    return record.id if record is not None else None


class _Sink:
    """Where streaming events go: the event stream, or nowhere (non-streaming requests)."""

    def __init__(self, events: EventStream | None) -> None:
        self.events = events

    async def send(self, kind: str, **payload: Any) -> None:
        if self.events is not None:
            await self.events.send({"type": kind, **payload}, event=kind)


@routes.post(protocol.API_NATIVE_CHAT)
async def chat(request: web.Request) -> web.StreamResponse:
    body = await bodies.read_json(request)
    chat_request = await _parse(request, body)
    admitted = await integrations.admit(request, chat_request.integrations)
    found = await _find(request, chat_request)
    toolbox = await integrations.connect(request, admitted) if admitted else None
    try:
        return await _respond(request, chat_request, found, toolbox)
    finally:
        if toolbox is not None:
            await toolbox.aclose()  # per-request MCP sessions end with the request


async def _find(request: web.Request, chat_request: ChatRequest) -> instances.Target | RemoteModel:
    """The remote model the request names, or the local model or instance."""
    remote = instances.remote(request, chat_request.model)
    if remote is None:
        return await instances.target(request, chat_request.model)
    if chat_request.context_length is not None:
        raise unsupported("A context length", remote.key, param="context_length")
    return remote


async def _respond(
    request: web.Request,
    chat_request: ChatRequest,
    found: instances.Target | RemoteModel,
    toolbox: Toolbox | None,
) -> web.StreamResponse:
    if isinstance(found, RemoteModel):
        instance_id = found.identifier
    else:
        instance_id = found.instance.identifier if found.instance else found.key
    result = ChatResult(instance_id=instance_id)
    if not chat_request.stream:
        await _run(request, chat_request, found, result, _Sink(None), toolbox)
        return web.json_response(result.body())
    events = await EventStream.open(request)
    sink = _Sink(events)

    async def error(err: LmsError) -> None:
        result.error = err
        await sink.send("error", error=protocol.api_error_body(err)["error"])
        await sink.send("chat.end", result=result.body())

    async with events.guard(error):
        await sink.send("chat.start", model_instance_id=instance_id)
        await _run(request, chat_request, found, result, sink, toolbox)
        await sink.send("chat.end", result=result.body())
    return events.response


async def _run(
    request: web.Request,
    chat_request: ChatRequest,
    found: instances.Target | RemoteModel,
    result: ChatResult,
    sink: _Sink,
    toolbox: Toolbox | None = None,
) -> None:
    instance: Instance | RemoteModel | None
    instance = found if isinstance(found, RemoteModel) else found.instance
    if instance is None:
        assert not isinstance(found, RemoteModel)
        instance = await _load(request, chat_request, found, result, sink)
    if toolbox is not None:
        await _run_tools(request, chat_request, instance, result, sink, toolbox)
        return
    # A stored chat may hold tool calls and results (from a chat with integrations).
    run = await pipeline.start(
        instance,
        pipeline.ChatPrompt(chat_request.messages),
        chat_request.params,
        record=functools.partial(record_generation, request),
        drafts=instances.drafts(request),
    )
    result.input_tokens = run.prompt_tokens
    async with run:
        await _stream(run, result, sink)
    result.input_tokens = run.prompt_tokens  # a remote engine's count arrives with its end
    if chat_request.store:
        messages = [*chat_request.messages, {"role": "assistant", "content": result.content}]
        result.response_id = await asyncio.to_thread(
            request.app[CHATS].save,
            owner=_owner(request),
            model=instance.model.key,
            messages=messages,
            output=result.body()["output"],
        )


async def _run_tools(
    request: web.Request,
    chat_request: ChatRequest,
    instance: Instance | RemoteModel,
    result: ChatResult,
    sink: _Sink,
    toolbox: Toolbox,
) -> None:
    """The tool loop, its events sent as ``tool_call.*``, ``message.*`` and
    ``prompt_processing.*``. The first round forces a call when the model is not trained for
    tool use, unless the request says ``"tool_choice": "auto"``."""
    choice = chat_request.tool_choice
    force = choice == "required" or (choice is None and not instance.model.trained_for_tool_use)
    runner = tool_loop.ToolLoop(
        instance,
        toolbox,
        chat_request.params,
        force_first=force,
        record=functools.partial(record_generation, request),
        drafts=instances.drafts(request),
    )
    in_prompt = False
    try:
        async with contextlib.aclosing(runner.run(chat_request.messages)) as loop_events:
            async for event in loop_events:
                if isinstance(event, tool_loop.Progress):
                    if not in_prompt:
                        in_prompt = True
                        await sink.send("prompt_processing.start")
                    await sink.send("prompt_processing.progress", progress=round(event.fraction, 3))
                    if event.fraction >= 1.0:
                        in_prompt = False
                        await sink.send("prompt_processing.end")
                else:
                    kind, payload = _loop_event(event)
                    await sink.send(kind, **payload)
    finally:
        outcome = runner.result
        result.items = outcome.output
        result.content = outcome.content
        result.input_tokens = outcome.prompt_tokens
        result.output_tokens = outcome.completion_tokens
        result.tokens_per_second = outcome.tokens_per_second
        result.time_to_first_token = outcome.time_to_first_token or 0.0
        result.draft = outcome.draft
    if chat_request.store:
        result.response_id = await asyncio.to_thread(
            request.app[CHATS].save,
            owner=_owner(request),
            model=instance.model.key,
            messages=[*chat_request.messages, *outcome.messages],
            output=result.body()["output"],
        )


def _loop_event(event: tool_loop.LoopEvent) -> tuple[str, dict[str, Any]]:
    """The SSE event (docs/API.md, Native stream events) of a tool-loop event other than prompt
    progress."""
    if isinstance(event, tool_loop.MessageStart):
        return "message.start", {}
    if isinstance(event, tool_loop.MessageDelta):
        return "message.delta", {"content": event.content}
    if isinstance(event, tool_loop.MessageEnd):
        return "message.end", {}
    if isinstance(event, tool_loop.CallStart):
        return "tool_call.start", {"tool": event.tool, "provider_info": event.provider_info}
    if isinstance(event, tool_loop.CallArguments):
        return "tool_call.arguments", {
            "tool": event.tool,
            "arguments": event.arguments,
            "provider_info": event.provider_info,
        }
    if isinstance(event, tool_loop.CallSuccess):
        return "tool_call.success", {
            "tool": event.tool,
            "arguments": event.arguments,
            "output": event.output,
            "provider_info": event.provider_info,
        }
    assert isinstance(event, tool_loop.CallFailure)
    return "tool_call.failure", {"reason": event.reason, "metadata": event.metadata}


async def _load(
    request: web.Request,
    chat_request: ChatRequest,
    found: instances.Target,
    result: ChatResult,
    sink: _Sink,
) -> Instance:
    """JIT-load for this request, streaming ``model_load.*`` events with llama.cpp's progress."""
    loop = asyncio.get_running_loop()
    progress: asyncio.Queue[float | None] = asyncio.Queue()
    await sink.send("model_load.start", model_instance_id=found.key)

    def report(fraction: float) -> None:  # called from the loading thread
        loop.call_soon_threadsafe(progress.put_nowait, fraction)

    async def forward() -> None:
        last = -1.0
        while (fraction := await progress.get()) is not None:
            if fraction - last >= 0.05 or fraction >= 1.0:
                last = fraction
                await sink.send(
                    "model_load.progress", model_instance_id=found.key, progress=round(fraction, 3)
                )

    forwarder = asyncio.create_task(forward())
    try:
        instance = await instances.acquire(
            request,
            chat_request.model,
            ttl=chat_request.ttl,
            context_length=chat_request.context_length,
            progress=report if sink.events is not None else None,
            resolved=found,
        )
    finally:
        progress.put_nowait(None)
        await forwarder
    result.instance_id = instance.identifier
    result.load_time = instance.load_time
    await sink.send(
        "model_load.end",
        model_instance_id=instance.identifier,
        load_time_seconds=round(instance.load_time, 3),
    )
    return instance


async def _stream(run: pipeline.Run, result: ChatResult, sink: _Sink) -> None:
    started_prompt = started_message = False
    pieces: list[str] = []
    try:
        async for item in run.events():
            if isinstance(item, PromptProgress):
                if not started_prompt:
                    started_prompt = True
                    await sink.send("prompt_processing.start")
                await sink.send("prompt_processing.progress", progress=round(item.fraction, 3))
                if item.fraction >= 1.0:
                    await sink.send("prompt_processing.end")
                continue
            if not started_message:
                started_message = True
                await sink.send("message.start")
            pieces.append(item)
            await sink.send("message.delta", content=item)
    finally:
        result.content = "".join(pieces)
        outcome = run.result
        if outcome is not None:
            result.output_tokens = outcome.completion_tokens
            result.tokens_per_second = outcome.tokens_per_second
            result.time_to_first_token = outcome.time_to_first_token
            result.draft = outcome.draft
    if started_message:
        await sink.send("message.end")
