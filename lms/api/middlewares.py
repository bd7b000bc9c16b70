"""Middlewares of the TCP API: error envelopes and the browser/network defences (SPEC §6)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from lms import protocol
from lms.api.state import CONFIG, LISTENER
from lms.errors import (
    ForbiddenRequestError,
    InternalError,
    LmsError,
    MethodNotAllowedError,
    PayloadTooLargeError,
    RouteNotFoundError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger("lms.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
_CORS_HEADERS = "Authorization, Content-Type, x-api-key, anthropic-version, OpenAI-Beta"


def error_response(request: web.Request, err: LmsError) -> web.Response:
    """The error envelope of the API family of ``request``."""
    if request.path in protocol.ANTHROPIC_PATHS:
        body = protocol.anthropic_error_body(err)
    else:
        body = protocol.api_error_body(err)
    return web.json_response(body, status=err.status, headers=err.headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into an envelope; never a traceback on the wire."""
    try:
        return await handler(request)
    except LmsError as exc:
        return error_response(request, exc)
    except web.HTTPException as exc:
        mapped = _http_error(request, exc)
        if mapped is None:
            raise
        return error_response(request, mapped)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(request, InternalError("internal error; see the daemon log"))


def _http_error(request: web.Request, exc: web.HTTPException) -> LmsError | None:
    if exc.status == 404:
        return RouteNotFoundError(f"unknown route: {request.method} {request.path}")
    if exc.status == 405:
        return MethodNotAllowedError(f"{request.method} is not allowed on {request.path}")
    if exc.status == 413:
        return PayloadTooLargeError(
            f"the request body is larger than {protocol.MAX_BODY_BYTES} bytes"
        )
    return None


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[: host_header.find("]") + 1].lower()
    name = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    return name.lower()


@web.middleware
async def defences(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host check, Origin check, CORS, JSON content type, body size — with auth on or off."""
    settings = request.app[CONFIG].current()  # fails closed (503) while config.toml is broken
    listener = request.app[LISTENER]
    if listener.is_loopback:
        host = _host_name(request.headers.get("Host", ""))
        allowed = {h.lower() for h in settings.server_allowed_hosts}
        if host not in _LOOPBACK_HOSTS and host not in allowed:
            raise ForbiddenRequestError(
                f"Host {host or '(none)'!r} is not accepted on a loopback server"
                " (add it with: lms config set server.allowed_hosts ...)"
            )
    origin = request.headers.get("Origin")
    if origin is not None and origin not in settings.server_cors_origins:
        raise ForbiddenRequestError(
            f"requests from the web origin {origin!r} are refused"
            " (allow it with: lms config set server.cors on and server.cors_origins ...)"
        )
    cors = settings.server_cors and origin is not None
    if request.method == "OPTIONS" and cors:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin or "",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": _CORS_HEADERS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )
    if request.method == "POST":
        length = request.content_length
        if length is not None and length > protocol.MAX_BODY_BYTES:
            raise PayloadTooLargeError(
                f"the request body is larger than {protocol.MAX_BODY_BYTES} bytes"
            )
        if request.content_type != "application/json":
            raise UnsupportedMediaTypeError(
                f"Content-Type must be application/json, not {request.content_type!r}"
            )
    if cors and origin is not None:
        request[CORS_ORIGIN] = origin
    return await handler(request)


CORS_ORIGIN = web.RequestKey("cors_origin", str)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: CORS headers on every response, streamed ones included."""
    origin = request.get(CORS_ORIGIN)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
