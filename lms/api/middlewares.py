"""Middlewares of the TCP API: error envelopes and the browser/network defences (README:
Settings)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lms import protocol
from lms.api.state import CONFIG, LISTENER
from lms.errors import (
    ForbiddenRequestError,
    InternalError,
    LmsError,
    MethodNotAllowedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    RouteNotFoundError,
    UnsupportedMediaTypeError,
)
from lms.redaction import loggable_path, redact_secrets

log = logging.getLogger("lms.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: A request body must arrive at MIN_BODY_RATE bytes/s on average after a grace period
#: (docs/LIMITS.md); a slower one is cut with 408 instead of holding a connection and a handler.
BODY_GRACE_SECONDS = 10.0
MIN_BODY_RATE = 16 * 1024

_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
_CORS_HEADERS = "Authorization, Content-Type, x-api-key, anthropic-version, OpenAI-Beta"


def error_response(request: web.Request, err: LmsError) -> web.Response:
    """The error envelope of the API family of ``request``.

    Messages may quote a client's input: whatever looks like a token or a secret is redacted
    from the envelope, whichever handler raised it."""
    if request.path in protocol.ANTHROPIC_PATHS:
        body = protocol.anthropic_error_body(err)
    else:
        body = protocol.api_error_body(err)
    return web.json_response(_redacted(body), status=err.status, headers=err.headers)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


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
        log.exception("internal error on %s %s", request.method, loggable_path(request.path))
        return error_response(request, InternalError("internal error; see the daemon log"))


def _http_error(request: web.Request, exc: web.HTTPException) -> LmsError | None:
    if exc.status == 404:
        return RouteNotFoundError(f"unknown route: {request.method} {loggable_path(request.path)}")
    if exc.status == 405:
        return MethodNotAllowedError(
            f"{request.method} is not allowed on {loggable_path(request.path)}"
        )
    if exc.status == 413:
        return PayloadTooLargeError(
            f"the request body is larger than {protocol.MAX_BODY_BYTES} bytes"
        )
    return None


# RFC 3986 §3.2.2 host (reg-name or IPv4: unreserved, sub-delims, pct-encoded; or a bracketed
# IPv6 literal), then only an optional ":port" (RFC 9110 §7.2: Host = uri-host [ ":" port ]).
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_PORT = re.compile(r"[0-9]{0,5}")


def _host_name(host_header: str) -> str | None:
    """The host of a Host header, lowercased (``[::1]`` keeps its brackets), or None when the
    header is not exactly ``host [":" port]`` ("" when there is no Host header)."""
    if not host_header:
        return ""
    if host_header.startswith("["):
        end = host_header.find("]")
        if end < 0:
            return None
        literal, rest = host_header[1:end], host_header[end + 1 :]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        name = f"[{literal}]"
    else:
        name, colon, port = host_header.partition(":")
        rest = colon + port
        if not _REG_NAME.fullmatch(name):
            return None
    if rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:])):
        return None
    return name.lower()


@web.middleware
async def defences(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host check, Origin check, CORS, JSON content type, body size — with auth on or off."""
    settings = request.app[CONFIG].current()  # fails closed (503) while config.toml is broken
    listener = request.app[LISTENER]
    if listener.is_loopback:
        host = _host_name(request.headers.get("Host", ""))
        allowed = {h.lower() for h in settings.server_allowed_hosts}
        if host is None:
            raise ForbiddenRequestError(
                "the Host header is malformed: a loopback server accepts only"
                " 'name[:port]' or '[IPv6 address][:port]'"
            )
        if host not in _LOOPBACK_HOSTS and host not in allowed:
            raise ForbiddenRequestError(
                f"Host {loggable_path(host) or '(none)'!r} is not accepted on a loopback server"
                " (add it with: lms config set server.allowed_hosts ...)"
            )
    origin = request.headers.get("Origin")
    if origin is not None and origin not in settings.server_cors_origins:
        raise ForbiddenRequestError(
            f"requests from the web origin {loggable_path(origin)!r} are refused"
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
    if request.method != "POST" or not request.body_exists:
        return await handler(request)
    watchdog = asyncio.ensure_future(_watch_body(request))
    try:
        return await handler(request)
    finally:
        watchdog.cancel()


class _SlowBodyError(RequestTimeoutError, TimeoutError):
    """RequestTimeoutError, set on the body stream. Being a TimeoutError too lets aiohttp's
    lingering read after the 408 stop quietly and close the connection (anything else is
    logged as an unhandled exception)."""


async def _watch_body(request: web.Request) -> None:
    """Until the body has arrived: past BODY_GRACE_SECONDS, at least MIN_BODY_RATE bytes/s on
    average, or the handler's read fails with 408 and the connection is closed after the answer.
    Nothing is read ahead: the token is still checked before any handler reads the body."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    content = request.content
    while not content.is_eof():
        received = content.total_bytes
        remaining = started + BODY_GRACE_SECONDS + received / MIN_BODY_RATE - loop.time()
        if remaining <= 0:
            content.set_exception(
                _SlowBodyError(
                    f"the request body arrived slower than {MIN_BODY_RATE // 1024} KiB/s"
                    f" ({received} bytes in {loop.time() - started:.0f} s)"
                )
            )
            return
        await asyncio.sleep(remaining)  # a deadline, not a readiness wait: then look again


CORS_ORIGIN = web.RequestKey("cors_origin", str)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: CORS headers on every response, streamed ones included."""
    origin = request.get(CORS_ORIGIN)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
