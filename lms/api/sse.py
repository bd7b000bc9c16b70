"""The one writer of streamed responses: server-sent events, and NDJSON on the control socket.

Every write is bounded: a client that has not taken a write within :data:`WRITE_TIMEOUT`
seconds (it reads too slowly, or not at all) is cut — the connection is aborted and the
handler unwinds, which cancels its generation and frees the slot (docs/LIMITS.md).

:meth:`EventStream.guard` ends every stream the same way: anything raised after the headers
went out (an LmsError, or any unexpected exception, logged) becomes the family's error event,
then the stream ends; a client that left or was cut ends it quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal

from aiohttp import web

from lms.errors import InternalError, LmsError

log = logging.getLogger("lms.api")

#: Seconds a client may take to accept one write of a stream before the stream is cut.
WRITE_TIMEOUT = 30.0
#: Bytes of a stream held for a client that reads slowly before writes wait for it: in the
#: server's write buffer, and in the kernel's send buffer (which the kernel doubles). A fixed
#: send buffer also keeps the kernel from growing it to megabytes for a client that does not
#: read, which would delay the cut by as much output.
WRITE_BUFFER_BYTES = 16 * 1024
SEND_BUFFER_BYTES = 32 * 1024

_HEADERS = {
    "sse": {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    },
    "ndjson": {"Content-Type": "application/x-ndjson"},
}


class StreamCutError(ConnectionResetError):
    """The client did not accept a write in time; its connection was aborted."""


def _json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


class EventStream:
    """A streamed response being written. Build it with :meth:`open`."""

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        framing: Literal["sse", "ndjson"],
    ) -> None:
        self.request = request
        self.response = response
        self.framing = framing
        self.is_cut = False
        self._ended = False

    @classmethod
    async def open(
        cls, request: web.Request, framing: Literal["sse", "ndjson"] = "sse"
    ) -> EventStream:
        """Send the headers of a stream (the status is 200 from here on)."""
        response = web.StreamResponse(headers=_HEADERS[framing])
        await response.prepare(request)
        transport = request.transport
        if transport is not None:
            transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        return cls(request, response, framing)

    async def send(self, data: Mapping[str, Any] | str, *, event: str | None = None) -> None:
        """One event: ``event:`` (when named) and ``data:`` lines; one line in NDJSON."""
        text = data if isinstance(data, str) else _json(data)
        if self.framing == "ndjson":
            frame = text + "\n"
        elif event is None:
            frame = f"data: {text}\n\n"
        else:
            frame = f"event: {event}\ndata: {text}\n\n"
        await self._bounded(functools.partial(self._write, frame.encode()))

    async def end(self) -> None:
        """Finish the response (the last chunk of a chunked body); once."""
        if not self._ended:
            self._ended = True
            await self._bounded(self.response.write_eof)

    async def _write(self, data: bytes) -> None:
        await self.response.write(data)
        await self.request.writer.drain()  # waits while the client is behind by a buffer

    async def _bounded(self, write: Callable[[], Awaitable[None]]) -> None:
        if self.is_cut:
            raise StreamCutError("the stream was cut")
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await write()
        except TimeoutError:
            self._cut()
            raise StreamCutError(
                f"the client accepted no data for {WRITE_TIMEOUT:g} seconds"
            ) from None

    def _cut(self) -> None:
        self.is_cut = True
        log.warning(
            "cut the stream of %s %s: the client accepted no data for %g seconds",
            self.request.method,
            self.request.path,
            WRITE_TIMEOUT,
        )
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    @contextlib.asynccontextmanager
    async def guard(self, error: Callable[[LmsError], Awaitable[None]]) -> AsyncIterator[None]:
        """Run the body of the stream, then end it: a failure inside becomes ``error``'s
        event (the family's shape); a client gone or cut ends it without one."""
        try:
            yield
        except ConnectionError:
            return  # the client left (or was cut): nobody to tell
        except Exception as exc:
            err = exc if isinstance(exc, LmsError) else _internal(self.request, exc)
            try:
                await error(err)
            except ConnectionError:
                return
        with contextlib.suppress(ConnectionError):
            await self.end()


def _internal(request: web.Request, exc: Exception) -> LmsError:
    log.error("internal error on %s %s", request.method, request.path, exc_info=exc)
    return InternalError("internal error; see the daemon log")
