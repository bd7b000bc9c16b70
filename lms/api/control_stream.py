"""Streaming control routes: ``lms log stream`` and ``lms chat`` over the Unix socket.

Both answer NDJSON (one JSON object per line) so that the CLI's stdlib client can read them
line by line. ``lms chat`` runs on the control plane, like LM Studio's own CLI: the local owner
needs no API token, and the HTTP server need not be running.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from lms import protocol
from lms.api import bodies, instances
from lms.api.state import LOGS
from lms.errors import InvalidParameterError, LmsError
from lms.logstream import SOURCES, LogHub

routes = web.RouteTableDef()


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


async def _ndjson(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    return response


@routes.get(protocol.CONTROL_LOGS)
async def stream_logs(request: web.Request) -> web.StreamResponse:
    wanted = request.query.getall("source", list(SOURCES))
    unknown = [s for s in wanted if s not in SOURCES]
    if unknown:
        raise InvalidParameterError(
            f"unknown log source {unknown[0]!r}; sources: {', '.join(SOURCES)}", param="source"
        )
    response = await _ndjson(request)
    hub = request.app[LOGS]
    with hub.subscribe(frozenset(wanted)) as subscription:
        await response.write(_line({"type": "subscribed", "sources": wanted}))
        while True:
            event = await subscription.queue.get()
            await response.write(_line(event))


@routes.post(protocol.CONTROL_CHAT)
async def chat(request: web.Request) -> web.StreamResponse:
    body = await bodies.read_json(request)
    model = bodies.require(body, "model", str)
    messages = bodies.require(body, "messages", list)
    for i, message in enumerate(messages):
        if not (
            isinstance(message, dict)
            and message.get("role") in ("system", "user", "assistant")
            and isinstance(message.get("content"), str)
        ):
            raise InvalidParameterError(
                f"'messages[{i}]' must be {{role, content}} with a text content",
                param=f"messages[{i}]",
            )
    params = bodies.sampling(body, max_token_fields=("max_tokens",))
    instance = await instances.acquire(request, model, ttl=bodies.get(body, "ttl", int))
    tokens, stops = instance.chat_prompt(messages)
    params = dataclasses.replace(params, stop=tuple(dict.fromkeys((*params.stop, *stops))))
    generation = instance.engine.submit(tokens, params)
    response = await _ndjson(request)
    try:
        await response.write(_line({"type": "start", "model_instance_id": instance.identifier}))
        try:
            async for piece in generation.stream():
                await response.write(_line({"type": "delta", "content": piece}))
        except LmsError as err:
            await response.write(_line({"type": "error", **protocol.control_error_body(err)}))
            return response
        result = generation.result
        stats = {
            "stop_reason": result.finish_reason if result else "stop",
            "prompt_tokens": len(tokens),
            "predicted_tokens": result.completion_tokens if result else 0,
            "tokens_per_second": round(result.tokens_per_second, 2) if result else 0.0,
            "time_to_first_token_seconds": round(result.time_to_first_token, 3) if result else 0,
        }
        await response.write(_line({"type": "end", "stats": stats}))
    finally:
        generation.cancel()
    return response


def add_stream_routes(app: web.Application, hub: LogHub) -> None:
    """Add the streaming routes to the control application (before it starts)."""
    app[LOGS] = hub
    app.add_routes(routes)
