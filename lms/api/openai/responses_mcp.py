"""``POST /v1/responses`` with MCP tools: the tool loop in OpenAI's item shapes (docs/API.md,
Responses).

``output`` holds an ``mcp_list_tools`` item per server (the tools it offers to this request),
an ``mcp_call`` item per call (``output`` the text of the result; a call that was not run —
a tool outside ``allowed_tools``, bad arguments — has ``status: "failed"`` and ``error``), and
``message`` items. Streaming adds OpenAI's events for them (``response.output_item.added`` /
``done``, ``response.mcp_list_tools.*``, ``response.mcp_call.*``,
``response.mcp_call_arguments.*``) to the text events of a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lms.api import instances
from lms.api.security import record_generation
from lms.api.sse import EventStream
from lms.api.state import CHATS
from lms.errors import InvalidParameterError, LmsError
from lms.inference.manager import Instance
from lms.inference.sampling import SamplingParams
from lms.mcp import loop as tool_loop
from lms.mcp.loop import Toolbox
from lms.remote.models import RemoteModel

#: Builds the response object from a status, its output items and usage.
Shape = Callable[[str, list[dict[str, Any]], dict[str, Any] | None], dict[str, Any]]


def force_first(body: dict[str, Any], instance: Instance | RemoteModel) -> bool:
    """Whether the first round must call a tool: ``tool_choice`` ``required``, or absent for a
    model not trained for tool use (``auto`` lets the model answer at once)."""
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "required"):
        raise InvalidParameterError(
            "'tool_choice' must be 'auto' or 'required' with MCP tools", param="tool_choice"
        )
    return choice == "required" or (choice is None and not instance.model.trained_for_tool_use)


def list_tools_items(toolbox: Toolbox) -> list[dict[str, Any]]:
    """One ``mcp_list_tools`` item per server, with the tools it offers to this request."""
    by_server: dict[str, list[dict[str, Any]]] = {}
    for entry in toolbox.offered.values():
        by_server.setdefault(_label(entry.connection.provider_info), []).append(
            {
                "name": entry.tool.name,
                "description": entry.tool.description,
                "input_schema": entry.tool.parameters,
                "annotations": None,
            }
        )
    return [
        {
            "id": "mcpl_" + secrets.token_hex(24),
            "type": "mcp_list_tools",
            "server_label": label,
            "tools": tools,
            "error": None,
        }
        for label, tools in by_server.items()
    ]


def _label(provider_info: dict[str, str]) -> str:
    return provider_info.get("server_label") or provider_info.get("plugin_id", "").removeprefix(
        "mcp/"
    )


@dataclass
class Events:
    """The events of a streamed response, each with its ``sequence_number``."""

    stream: EventStream
    sequence: int = 0

    async def send(self, kind: str, **payload: Any) -> None:
        data = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        await self.stream.send(data, event=kind)

    async def error(self, err: LmsError) -> None:
        """The ``error`` event that ends a stream which failed after it started."""
        await self.send("error", code=err.code, message=err.message, param=err.param)


async def respond(
    request: web.Request,
    *,
    body: dict[str, Any],
    instance: Instance | RemoteModel,
    messages: list[dict[str, Any]],
    params: SamplingParams,
    toolbox: Toolbox,
    shape: Shape,
    response_id: str,
    owner: str | None,
) -> web.StreamResponse:
    runner = tool_loop.ToolLoop(
        instance,
        toolbox,
        params,
        force_first=force_first(body, instance),
        record=functools.partial(record_generation, request),
        drafts=instances.drafts(request),
    )
    output = list_tools_items(toolbox)

    async def run_loop(events: Events | None) -> dict[str, Any]:
        items = _Items(output, events)
        async with contextlib.aclosing(runner.run(messages)) as loop_events:
            async for event in loop_events:
                await items.handle(event)
        result = runner.result
        usage = {
            "input_tokens": result.prompt_tokens,
            "output_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "input_tokens_details": {"cached_tokens": result.cached_tokens},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        status = "incomplete" if result.finish_reason == "length" else "completed"
        final = shape(status, output, usage)
        if body.get("store", True) is not False:
            await asyncio.to_thread(
                request.app[CHATS].save,
                owner=owner,
                model=instance.model.key,
                messages=[*messages, *result.messages],
                output=output,
                response_id=response_id,
            )
        return final

    if not body.get("stream"):
        return web.json_response(await run_loop(None))
    events = Events(await EventStream.open(request))
    async with events.stream.guard(events.error):
        await events.send("response.created", response=shape("in_progress", [], None))
        await events.send("response.in_progress", response=shape("in_progress", [], None))
        for item in output:
            await _list_tools_events(events, item, output.index(item))
        final = await run_loop(events)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        await events.send(kind, response=final)
    return events.stream.response


async def _list_tools_events(stream: Events, item: dict[str, Any], index: int) -> None:
    await stream.send("response.output_item.added", output_index=index, item=item)
    for kind in ("response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed"):
        await stream.send(kind, item_id=item["id"], output_index=index)
    await stream.send("response.output_item.done", output_index=index, item=item)


class _Items:
    """Turns tool-loop events into output items, and into stream events when streaming."""

    def __init__(self, output: list[dict[str, Any]], stream: Events | None) -> None:
        self.output = output
        self.stream = stream
        self._message: dict[str, Any] | None = None
        self._call: dict[str, Any] | None = None

    async def _send(self, kind: str, **payload: Any) -> None:
        if self.stream is not None:
            await self.stream.send(kind, **payload)

    async def handle(self, event: tool_loop.LoopEvent) -> None:
        if isinstance(event, tool_loop.MessageStart):
            await self._open_message()
        elif isinstance(event, tool_loop.MessageDelta):
            await self._delta(event.content)
        elif isinstance(event, tool_loop.MessageEnd):
            await self._close_message(event.content)
        elif isinstance(event, tool_loop.CallStart):
            await self._open_call(event.tool, event.provider_info)
        elif isinstance(event, tool_loop.CallArguments):
            await self._arguments(event)
        elif isinstance(event, tool_loop.CallSuccess):
            await self._close_call(output=_text(event.result), error=None)
        elif isinstance(event, tool_loop.CallFailure):
            if self._call is None:  # a tool that is not offered: never announced
                name = str(event.metadata.get("tool_name", ""))
                await self._open_call(name, event.metadata.get("provider_info") or {})
            if self._call is not None and "arguments" in event.metadata:
                self._call["arguments"] = json.dumps(event.metadata["arguments"])
            await self._close_call(output=None, error=event.reason)

    async def _open_message(self) -> None:
        self._message = {
            "id": "msg_" + secrets.token_hex(24),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self.output.append(self._message)
        index = len(self.output) - 1
        await self._send("response.output_item.added", output_index=index, item=self._message)
        await self._send(
            "response.content_part.added",
            item_id=self._message["id"],
            output_index=index,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        )

    async def _delta(self, text: str) -> None:
        assert self._message is not None
        await self._send(
            "response.output_text.delta",
            item_id=self._message["id"],
            output_index=self.output.index(self._message),
            content_index=0,
            delta=text,
            logprobs=[],
        )

    async def _close_message(self, content: str) -> None:
        message = self._message
        assert message is not None
        self._message = None
        part = {"type": "output_text", "text": content, "annotations": []}
        message.update(status="completed", content=[part])
        index = self.output.index(message)
        where = {"item_id": message["id"], "output_index": index, "content_index": 0}
        await self._send("response.output_text.done", **where, text=content, logprobs=[])
        await self._send("response.content_part.done", **where, part=part)
        await self._send("response.output_item.done", output_index=index, item=message)

    async def _open_call(self, name: str, provider_info: dict[str, str]) -> None:
        self._call = {
            "id": "mcp_" + secrets.token_hex(24),
            "type": "mcp_call",
            "status": "in_progress",
            "server_label": _label(provider_info),
            "name": name,
            "arguments": "",
            "output": None,
            "error": None,
            "approval_request_id": None,
        }
        self.output.append(self._call)
        index = len(self.output) - 1
        await self._send("response.output_item.added", output_index=index, item=self._call)
        await self._send(
            "response.mcp_call.in_progress", item_id=self._call["id"], output_index=index
        )

    async def _arguments(self, event: tool_loop.CallArguments) -> None:
        if self._call is None:
            await self._open_call(event.tool, event.provider_info)
        assert self._call is not None
        self._call["arguments"] = json.dumps(event.arguments, ensure_ascii=False)
        where = {"item_id": self._call["id"], "output_index": self.output.index(self._call)}
        await self._send(
            "response.mcp_call_arguments.delta", **where, delta=self._call["arguments"]
        )
        await self._send(
            "response.mcp_call_arguments.done", **where, arguments=self._call["arguments"]
        )

    async def _close_call(self, *, output: str | None, error: str | None) -> None:
        call = self._call
        if call is None:
            return
        self._call = None
        call.update(output=output, error=error, status="failed" if error else "completed")
        index = self.output.index(call)
        await self._send(
            "response.mcp_call.failed" if error else "response.mcp_call.completed",
            item_id=call["id"],
            output_index=index,
        )
        await self._send("response.output_item.done", output_index=index, item=call)


def _text(result: Any) -> str:
    """The text of an MCP tool result (its text parts; other parts as JSON)."""
    parts = []
    for block in result.content:
        text = getattr(block, "text", None)
        parts.append(
            text
            if isinstance(text, str)
            else json.dumps(block.model_dump(mode="json", by_alias=True, exclude_none=True))
        )
    return "\n".join(parts)
