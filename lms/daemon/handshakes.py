"""TLS connections of the TCP API from their TCP accept to the end of their handshake.

asyncio's own TLS server (``create_server(ssl=...)``) tells the protocol of a connection about it
only once its handshake is done, and not at all when the handshake fails: connections still in
their handshake would not count against the connection caps (docs/LIMITS.md), and one client
could hold any number of sockets, each for the whole handshake timeout.

So a TLS listener accepts plain TCP: each connection is admitted by the caps at accept (one past a
cap is closed at once, without a word: a plaintext 503 means nothing to a TLS client), then
upgraded with ``loop.start_tls`` within the handshake timeout, and handed to aiohttp's handler once
the handshake is done. Its place is given back exactly once, when it closes: refused, handshake
failed, timed out, client gone mid-handshake, closed after requests, or cut at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from lms.daemon.connections import ConnectionLimits

log = logging.getLogger("lms.daemon")

# start_tls is bounded by the TLS layer's own handshake timeout; this margin only bounds the wait
# for the socket's close after it (start_tls returns when the socket is gone).
_CLOSE_MARGIN_SECONDS = 5.0


class _TlsConnection(asyncio.Protocol):
    """The application protocol of one admitted TLS connection: it holds the connection's place in
    the caps until the connection closes, and passes the decrypted stream to aiohttp's handler
    once the handshake is done (what arrives before that is kept for it)."""

    def __init__(self, limits: ConnectionLimits, peer: str) -> None:
        self._limits = limits
        self._peer: str | None = peer
        self._handler: asyncio.Protocol | None = None
        self._early: list[bytes] = []  # at most a read or two: the handler comes next
        self._early_eof = False
        self._writing_paused = False
        self._lost = False

    def release(self) -> None:
        """Give the connection's place back (once, whatever calls it first)."""
        peer, self._peer = self._peer, None
        if peer is not None:
            self._limits.release(peer)

    def hand_over(self, transport: asyncio.Transport, handler: asyncio.Protocol) -> None:
        if self._lost:  # the client left between its handshake and now
            transport.close()
            return
        self._handler = handler
        handler.connection_made(transport)
        if self._writing_paused:
            handler.pause_writing()
        early, self._early = self._early, []
        for data in early:
            handler.data_received(data)
        if self._early_eof:
            handler.eof_received()

    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.data_received(data)
        elif not self._lost:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._handler is not None:
            return self._handler.eof_received()
        self._early_eof = True
        return None  # the TLS layer closes the connection after its close_notify either way

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._handler is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        # The TLS layer calls this for a connection whose handshake failed too (start_tls made
        # this protocol "connected" from the start), and never for one that timed out or was
        # reset mid-handshake: _upgrade releases those; release() tells the two apart.
        self._lost = True
        self._early.clear()
        self.release()
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.connection_lost(exc)


class _Acceptor(asyncio.Protocol):
    """The protocol of an accepted TCP connection of a TLS listener, until start_tls replaces it."""

    def __init__(self, handshakes: Handshakes) -> None:
        self._handshakes = handshakes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handshakes.accept(cast(asyncio.Transport, transport))


class Handshakes:
    """The TLS connections of one listener between accept and the end of their handshake.

    ``timeout`` bounds each handshake; it is read when a connection is accepted."""

    def __init__(
        self,
        limits: ConnectionLimits,
        context: ssl.SSLContext,
        make_handler: Callable[[], asyncio.Protocol],
        timeout: float,
    ) -> None:
        self._limits = limits
        self._context = context
        self._make_handler = make_handler
        self.timeout = timeout
        self._upgrading: set[asyncio.Task[None]] = set()
        self._closed = False

    def acceptor(self) -> asyncio.Protocol:
        """The protocol of a newly accepted TCP connection (the listening socket's factory)."""
        return _Acceptor(self)

    def accept(self, transport: asyncio.Transport) -> None:
        peer = None if self._closed else self._limits.admit_connection(transport)
        if peer is None:
            transport.close()
            return
        # Nothing may be read before start_tls has put the TLS layer in place: the ClientHello
        # would be lost. start_tls resumes reading.
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(
            self._upgrade(transport, _TlsConnection(self._limits, peer), self.timeout)
        )
        self._upgrading.add(task)
        task.add_done_callback(self._upgrading.discard)

    async def _upgrade(
        self, transport: asyncio.Transport, connection: _TlsConnection, timeout: float
    ) -> None:
        loop = asyncio.get_running_loop()
        upgraded: asyncio.Transport | None = None
        try:
            if not transport.is_closing():  # not reset before its upgrade began
                async with asyncio.timeout(timeout + _CLOSE_MARGIN_SECONDS):
                    upgraded = await loop.start_tls(
                        transport,
                        connection,
                        self._context,
                        server_side=True,
                        ssl_handshake_timeout=timeout,
                    )
        except OSError:
            pass  # a failed, timed-out or abandoned handshake: start_tls closed the socket
        except Exception:
            log.exception("upgrading a connection to TLS failed")
        finally:
            if upgraded is None:  # None too when the client left right after its handshake
                transport.close()
                connection.release()
        if upgraded is not None:
            connection.hand_over(upgraded, self._make_handler())

    async def close(self) -> None:
        """Refuse new connections and cut those still in their handshake (their places are given
        back); connections already handed over are aiohttp's to close."""
        self._closed = True
        upgrading = list(self._upgrading)
        for task in upgrading:
            task.cancel()
        await asyncio.gather(*upgrading, return_exceptions=True)
