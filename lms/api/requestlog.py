"""Request records: the access log line of each request, and ``server.request`` events for
``lms log stream --source server`` (method, route, status, token id).

Both show the path only — never the query string (``?api_key=`` would carry a token) — redacted,
with control characters escaped and a length cap (:func:`lms.redaction.loggable_path`).
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from lms.api.middlewares import Handler
from lms.api.security import TOKEN
from lms.api.state import LOGS
from lms.redaction import loggable_path, scrub


class AccessLogger(AbstractAccessLogger):
    """One line per request: peer, method, path (no query), status, body bytes, seconds."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.6fs',
            request.remote or "-",
            scrub(request.method),
            loggable_path(request.path),
            response.status,
            response.body_length,
            time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


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
                "route": loggable_path(request.path),
                "status": status,
                "token_id": record.id if record is not None else None,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
