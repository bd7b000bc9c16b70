"""Request events for ``lms log stream --source server``: method, route, status, token id."""

from __future__ import annotations

import time

from aiohttp import web

from lms.api.middlewares import Handler
from lms.api.security import TOKEN
from lms.api.state import LOGS


@web.middleware
async def publish_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    hub = request.app[LOGS]
    if not hub.wants("server"):
        return await handler(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        record = request.get(TOKEN)
        hub.publish(
            "server",
            {
                "type": "server.request",
                "method": request.method,
                "route": request.path,
                "status": status,
                "token_id": record.id if record is not None else None,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
