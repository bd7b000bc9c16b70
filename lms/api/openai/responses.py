"""``POST /v1/responses``: OpenAI's Responses API (docs/API.md, Responses), stateful like the
native chat.

Responses share the stored-chat table with ``/api/v1/chat``: a ``resp_…`` id from either
continues on the other. Streaming uses OpenAI's event names (``response.created`` …
``response.completed``), each carrying a ``sequence_number``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from lms import pipeline, protocol
from lms.api import bodies, instances, integrations
from lms.api.openai import completions, responses_mcp
from lms.api.security import TOKEN, record_generation
from lms.api.sse import EventStream
from lms.api.state import CHATS
from lms.chats import new_response_id
from lms.errors import InvalidParameterError, NotImplementedYetError
from lms.inference.manager import Instance
from lms.inference.sampling import SamplingParams
from lms.inference.structured import text_format_grammar
from lms.remote.models import RemoteModel

routes = web.RouteTableDef()


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParameterError(
            f"'{where}' must be a string or a list of content parts", param=where
        )
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text"):
            raise InvalidParameterError(
                f"'{where}[{i}].type' must be 'input_text' (images are not supported)",
                param=f"{where}[{i}].type",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidParameterError(f"'{where}[{i}].text' must be a string", param=where)
        texts.append(text)
    return "\n".join(texts)


def _input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidParameterError(
            "'input' must be a string or a non-empty list of items", param="input"
        )
    messages = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidParameterError(f"'{where}' must be an object", param=where)
        if item.get("type", "message") != "message":
            raise InvalidParameterError(
                f"'{where}.type' {item.get('type')!r} is not supported (only messages)",
                param=f"{where}.type",
            )
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidParameterError(
                f"'{where}.role' must be user, assistant, system or developer",
                param=f"{where}.role",
            )
        role = "system" if role == "developer" else role
        messages.append(
            {"role": role, "content": _text_of(item.get("content"), f"{where}.content")}
        )
    return messages


def _response_body(
    *,
    response_id: str,
    model: str,
    created_at: int,
    status: str,
    text: str,
    body: Mapping[str, Any],
    usage: dict[str, Any] | None,
    message_id: str,
    incomplete: bool = False,
    items: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    output = [] if items is None else items
    if status != "in_progress" and items is None:
        output.append(
            {
                "id": message_id,
                "type": "message",
                "status": "incomplete" if incomplete else "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "model": model,
        "output": output,
        "previous_response_id": body.get("previous_response_id"),
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "parallel_tool_calls": False,
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": _shown_tools(body.get("tools")),
        "text": body.get("text") or {"format": {"type": "text"}},
        "store": body.get("store", True),
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "usage": usage,
        "metadata": {},
    }


def _shown_tools(tools: Any) -> list[Any]:
    """The request's tools as the response echoes them: never a header value (secrets)."""
    if not isinstance(tools, list):
        return []
    shown = []
    for tool in tools:
        if isinstance(tool, dict) and isinstance(tool.get("headers"), dict):
            tool = {**tool, "headers": dict.fromkeys(tool["headers"], "<redacted>")}
        shown.append(tool)
    return shown


@routes.post(protocol.API_OPENAI_RESPONSES)
async def create_response(request: web.Request) -> web.StreamResponse:
    body = await bodies.read_json(request)
    model_query = bodies.require(body, "model", str)
    if "input" not in body:
        raise InvalidParameterError("'input' is required", param="input")
    new_messages = _input_messages(body["input"])
    wanted = _mcp_tools(body.get("tools"))
    grammar = await asyncio.to_thread(text_format_grammar, body.get("text"), tools=bool(wanted))
    _refuse_logprobs(body)
    instructions = bodies.get(body, "instructions", str)
    store = bool(bodies.get(body, "store", bool, True))
    stream = bool(bodies.get(body, "stream", bool, False))
    params = dataclasses.replace(
        bodies.sampling(body, max_token_fields=("max_output_tokens",)), grammar=grammar
    )
    record = request.get(TOKEN)
    owner = record.id if record is not None else None
    history: list[dict[str, Any]] = []
    previous = bodies.get(body, "previous_response_id", str)
    if previous is not None:
        history = (await asyncio.to_thread(request.app[CHATS].load, previous, owner)).messages
    if instructions is not None:  # instructions apply to this response only (OpenAI semantics)
        history = [m for m in history if m.get("role") != "system"]
        history.insert(0, {"role": "system", "content": instructions})
    messages = history + new_messages

    admitted = await integrations.admit(request, wanted)
    instance = await instances.acquire_any(request, model_query, ttl=bodies.get(body, "ttl", int))
    if admitted:
        return await _with_tools(request, body, instance, messages, params, admitted, owner)
    # A stored conversation may hold tool calls and results (from a response with MCP tools).
    run = await pipeline.start(
        instance,
        pipeline.ChatPrompt(messages),
        params,
        record=functools.partial(record_generation, request),
        drafts=instances.drafts(request),
    )
    response_id = new_response_id()
    message_id = "msg_" + secrets.token_hex(24)
    created_at = int(time.time())

    def snapshot(status: str, text: str, usage: dict[str, Any] | None) -> dict[str, Any]:
        return _response_body(
            response_id=response_id,
            model=instance.model.key,
            created_at=created_at,
            status=status,
            text=text,
            body=body,
            usage=usage,
            message_id=message_id,
            incomplete=status == "incomplete",
        )

    async def finish(text: str) -> dict[str, Any]:
        result = run.result
        usage: dict[str, Any] = {
            "input_tokens": run.prompt_tokens,
            "output_tokens": run.completion_tokens,
            "total_tokens": run.prompt_tokens + run.completion_tokens,
            "input_tokens_details": {"cached_tokens": result.cached_tokens if result else 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        status = "incomplete" if result and result.finish_reason == "length" else "completed"
        final = snapshot(status, text, usage)
        if store:
            await asyncio.to_thread(
                request.app[CHATS].save,
                owner=owner,
                model=instance.model.key,
                messages=[*messages, {"role": "assistant", "content": text}],
                output=final["output"],
                response_id=response_id,
            )
        return final

    if not stream:
        async with run:
            text = await run.text()
        return web.json_response(await finish(text))
    return await _stream(request, run, snapshot, finish, message_id)


def _refuse_logprobs(body: Mapping[str, Any]) -> None:
    """Log probabilities are refused (400), not silently left out; 0 asks for none."""
    completions.refuse_top_logprobs(body)
    include = body.get("include")
    if isinstance(include, list) and "message.output_text.logprobs" in include:
        raise InvalidParameterError(
            "'include' of 'message.output_text.logprobs' is not supported: lms does not"
            " return log probabilities",
            param="include",
        )


def _mcp_tools(value: Any) -> list[integrations.Integration]:
    """MCP tools of the request; function tools are not served here yet (501)."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item.get("type") not in ("mcp", None):
                raise NotImplementedYetError(
                    f"'tools' of type {item.get('type')!r} are not available on /v1/responses"
                    " yet: only MCP tools ('mcp') are",
                    param="tools",
                )
    return integrations.parse_mcp_tools(value)


async def _with_tools(
    request: web.Request,
    body: dict[str, Any],
    instance: Instance | RemoteModel,
    messages: list[dict[str, Any]],
    params: SamplingParams,
    admitted: list[integrations.Admitted],
    owner: str | None,
) -> web.StreamResponse:
    toolbox = await integrations.connect(request, admitted)
    response_id = new_response_id()
    created_at = int(time.time())

    def shape(
        status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        return _response_body(
            response_id=response_id,
            model=instance.model.key,
            created_at=created_at,
            status=status,
            text="",
            body=body,
            usage=usage,
            message_id="",
            incomplete=status == "incomplete",
            items=output,
        )

    try:
        return await responses_mcp.respond(
            request,
            body=body,
            instance=instance,
            messages=messages,
            params=params,
            toolbox=toolbox,
            shape=shape,
            response_id=response_id,
            owner=owner,
        )
    finally:
        await toolbox.aclose()


async def _stream(
    request: web.Request,
    run: pipeline.Run,
    snapshot: Any,
    finish: Any,
    message_id: str,
) -> web.StreamResponse:
    events = responses_mcp.Events(await EventStream.open(request))
    send = events.send
    async with events.stream.guard(events.error), run:
        await send("response.created", response=snapshot("in_progress", "", None))
        await send("response.in_progress", response=snapshot("in_progress", "", None))
        item = {"id": message_id, "type": "message", "status": "in_progress", "role": "assistant"}
        await send("response.output_item.added", output_index=0, item={**item, "content": []})
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": message_id, "output_index": 0, "content_index": 0}
        await send("response.content_part.added", **where, part=part)
        pieces: list[str] = []
        async for piece in run.stream():
            pieces.append(piece)
            await send("response.output_text.delta", **where, delta=piece, logprobs=[])
        text = "".join(pieces)
        await send("response.output_text.done", **where, text=text, logprobs=[])
        await send("response.content_part.done", **where, part={**part, "text": text})
        final = await finish(text)  # stores the response: a failure is the error event
        await send("response.output_item.done", output_index=0, item=final["output"][0])
        await send(
            "response.incomplete" if final["status"] == "incomplete" else "response.completed",
            response=final,
        )
    return events.stream.response
