"""Streaming control routes: ``lms log stream`` and ``lms chat`` over the Unix socket.

Both answer NDJSON (one JSON object per line) so that the CLI's stdlib client can read them
line by line. ``lms chat`` runs on the control plane, like LM Studio's own CLI: the local owner
needs no API token, and the HTTP server need not be running.
"""

from __future__ import annotations

from aiohttp import web

from lms import pipeline, protocol
from lms.api import bodies, instances
from lms.api.sse import EventStream
from lms.api.state import LOGS
from lms.errors import InvalidParameterError, LmsError
from lms.logstream import SOURCES, LogHub

routes = web.RouteTableDef()


@routes.get(protocol.CONTROL_LOGS)
async def stream_logs(request: web.Request) -> web.StreamResponse:
    wanted = request.query.getall("source", list(SOURCES))
    unknown = [s for s in wanted if s not in SOURCES]
    if unknown:
        raise InvalidParameterError(
            f"unknown log source {unknown[0]!r}; sources: {', '.join(SOURCES)}", param="source"
        )
    lines = await EventStream.open(request, "ndjson")
    hub = request.app[LOGS]
    with hub.subscribe(frozenset(wanted)) as subscription:
        await lines.send({"type": "subscribed", "sources": wanted})
        while True:
            await lines.send(await subscription.queue.get())


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
    instance = await instances.acquire_any(request, model, ttl=bodies.get(body, "ttl", int))
    # The local owner needs no token: nothing to count against.
    run = await pipeline.start(
        instance,
        pipeline.ChatPrompt(messages),
        params,
        record=pipeline.no_record,
        drafts=instances.drafts(request),
    )
    lines = await EventStream.open(request, "ndjson")

    async def error(err: LmsError) -> None:
        await lines.send({"type": "error", **protocol.control_error_body(err)})

    async with lines.guard(error), run:
        await lines.send({"type": "start", "model_instance_id": instance.identifier})
        async for piece in run.stream():
            await lines.send({"type": "delta", "content": piece})
        result = run.result
        stats = {
            "stop_reason": result.finish_reason if result else "stop",
            "prompt_tokens": run.prompt_tokens,
            "predicted_tokens": run.completion_tokens,
            "tokens_per_second": round(result.tokens_per_second, 2) if result else 0.0,
            "time_to_first_token_seconds": round(result.time_to_first_token, 3) if result else 0,
        }
        await lines.send({"type": "end", "stats": stats})
    return lines.response


def add_stream_routes(app: web.Application, hub: LogHub) -> None:
    """Add the streaming routes to the control application (before it starts)."""
    app[LOGS] = hub
    app.add_routes(routes)
