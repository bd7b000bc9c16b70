"""Connection bounds of the TCP API (docs/LIMITS.md): slow or idle connections are closed, and
no client can take every file descriptor.

- **Header timeout.** A connection must deliver a request's complete headers within
  :data:`HEADER_TIMEOUT_SECONDS` of opening, or of its previous response; idle keep-alive
  connections close after the same time. aiohttp's ``keepalive_timeout`` does exactly this: its
  timer starts when the connection is made, is not reset by incoming bytes, and closes the
  connection if no complete request is waiting by then (a running request is never cut).
  A TLS handshake gets the same time before that (lms/daemon/handshakes.py).
- **Connection caps.** At most :data:`MAX_CONNECTIONS_PER_PEER` open connections per peer
  address and :data:`MAX_CONNECTIONS` in all, the latter also kept under the process's file
  descriptor limit minus :data:`FD_RESERVE` (models, logs, MCP servers, the control socket). A
  plain-HTTP connection past a cap is answered ``503 server_busy`` and closed at once. With TLS
  a connection counts from its TCP accept, through its handshake, to its close, and one past a
  cap is closed at accept without a word (a plaintext 503 means nothing to a TLS client): see
  lms/daemon/handshakes.py.

A request aiohttp cannot parse (a control character in a header, a space before a colon, a bare
LF, a line over 8190 bytes, ...) gets a JSON ``400 invalid_request`` envelope saying what kind of
fault it is, never aiohttp's plain-text answer, which quotes the raw line (a token with it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import http_exceptions, web

from lms import protocol
from lms.api.requestlog import AccessLogger
from lms.daemon.handshakes import Handshakes
from lms.errors import InternalError, InvalidRequestError, LmsError, ServerBusyError

log = logging.getLogger("lms.daemon")

HEADER_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_PEER = 128
FD_RESERVE = 256


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("cannot raise the open-file limit from %d to %d", soft, target)
    return soft


def connection_budget(wanted: int = MAX_CONNECTIONS) -> int:
    """How many API connections may be open at once: ``wanted``, within the fd limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


class ConnectionLimits:
    """Counts open connections, in total and per peer address (event-loop thread only)."""

    def __init__(self, total: int, per_peer: int) -> None:
        self.total = total
        self.per_peer = per_peer
        self._open: Counter[str] = Counter()
        self._count = 0
        self.refused = 0

    @property
    def open(self) -> int:
        return self._count

    def admit(self, peer: str) -> bool:
        if self._count >= self.total or self._open[peer] >= self.per_peer:
            self.refused += 1
            return False
        self._open[peer] += 1
        self._count += 1
        return True

    def release(self, peer: str) -> None:
        self._count -= 1
        self._open[peer] -= 1
        if self._open[peer] <= 0:
            del self._open[peer]

    def admit_connection(self, transport: asyncio.BaseTransport) -> str | None:
        """Count a new connection against its peer's and the total cap: its peer, or None (and
        the refusal logged, once per thousand) when it is past a cap."""
        peer = _peer_of(transport)
        if self.admit(peer):
            return peer
        if self.refused % 1000 == 1:  # a flood is logged, not one line per connection
            log.warning(
                "refusing connections past the limit (%d open; %d refused so far)",
                self._count,
                self.refused,
            )
        return None


def _peer_of(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return str(peername or "")


def _busy_response() -> bytes:
    err = ServerBusyError(
        "too many open connections (from your address or in all); retry after closing some"
    )
    body = json.dumps(protocol.api_error_body(err)).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _busy_response()


_PARSE_FAULTS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "a request line or header is longer than 8190 bytes"),
    (
        http_exceptions.InvalidHeader,
        "a header name or value holds a character HTTP does not allow",
    ),
    (http_exceptions.BadHttpMethod, "the request method is not a valid HTTP method"),
    (
        http_exceptions.BadStatusLine,
        "the request line must be 'METHOD /path HTTP/1.1' followed by CRLF",
    ),
)


def _parse_error(status: int, exc: BaseException | None) -> LmsError:
    """The envelope of a request aiohttp refused before any handler ran (never quoting it)."""
    if status >= 500:
        return InternalError("internal error; see the daemon log")
    for kind, message in _PARSE_FAULTS:
        if isinstance(exc, kind):
            return InvalidRequestError(f"malformed HTTP request: {message}")
    return InvalidRequestError(
        "malformed HTTP request: it is not valid HTTP/1.1 (headers end with CRLF, no spaces"
        " before a colon, no control characters, no more than 128 headers)"
    )


class ApiRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse with a JSON envelope.

    A TLS connection gets this one once its handshake is done (it was admitted at accept)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it (redacted: daemon/logs.py)
        err = _parse_error(status, exc)
        response = web.json_response(protocol.api_error_body(err), status=status)
        response.force_close()
        return response


class GuardedRequestHandler(ApiRequestHandler):
    """The handler of a plain-HTTP connection, admitted by :class:`ConnectionLimits` first."""

    def __init__(self, manager: web.Server, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = self._limits.admit_connection(transport)
        if peer is None:
            writable: Any = transport
            writable.write(_BUSY)
            transport.close()
            return
        self._peer = peer
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._peer is not None:
            super().data_received(data)

    def eof_received(self) -> None:
        if self._peer is not None:
            super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        peer, self._peer = self._peer, None
        if peer is None:
            return
        self._limits.release(peer)
        super().connection_lost(exc)


class GuardedSite(web.SockSite):
    """A listening socket whose connections are bounded (see the module docstring)."""

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        *,
        limits: ConnectionLimits,
        handler_args: dict[str, Any],
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = HEADER_TIMEOUT_SECONDS,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=backlog)
        self._listening = sock
        self._limits = limits
        self._handler_args = handler_args
        self._handshake_timeout = handshake_timeout
        self.handshakes: Handshakes | None = None  # with TLS, once started

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        limits, args = self._limits, self._handler_args

        def guarded() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, limits, loop=loop, **args)

        def upgraded() -> ApiRequestHandler:
            return ApiRequestHandler(server, loop=loop, **args)

        if self._ssl_context is None:
            factory: Callable[[], asyncio.Protocol] = guarded
        else:
            self.handshakes = Handshakes(
                limits, self._ssl_context, upgraded, self._handshake_timeout
            )
            factory = self.handshakes.acceptor
        self._server = await loop.create_server(
            factory, sock=self._listening, backlog=self._backlog
        )

    async def stop(self) -> None:
        await super().stop()  # no new connections
        if self.handshakes is not None:
            await self.handshakes.close()


def handler_args(header_timeout: float = HEADER_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Keyword arguments of each connection's handler (and of the runner, to match)."""
    return {
        "access_log_class": AccessLogger,
        "access_log": logging.getLogger("aiohttp.access"),
        "keepalive_timeout": header_timeout,
    }
