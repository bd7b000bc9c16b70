"""Connection bounds of the TCP API over real sockets (docs/LIMITS.md): slow and idle
connections are closed, one peer cannot hold more than its share of connections.

The application is a one-route plumbing app: what is under test is the site and its handlers
(lms/daemon/connections.py), with a small header timeout so that the tests stay short."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from lms.daemon import connections

TIMEOUT = 0.5  # the header timeout of these tests' server
DEADLINE = 60.0  # generous: how long a test waits for something that must happen


@dataclass
class Served:
    port: int
    limits: connections.ConnectionLimits


async def _slow(request: web.Request) -> web.Response:
    # A request that runs longer than the header timeout: it must not be cut.
    await asyncio.sleep(TIMEOUT * 4)
    return web.json_response({"ok": True})


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _echo_socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str(message.data)
    return ws


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    total, per_peer, timeout = getattr(request, "param", (100, 3, TIMEOUT))
    app = web.Application()
    app.router.add_get("/", _hello)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/ws", _echo_socket)
    args = connections.handler_args(timeout)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, **args)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    limits = connections.ConnectionLimits(total, per_peer)
    await connections.GuardedSite(runner, sock, limits=limits, handler_args=args).start()
    try:
        yield Served(sock.getsockname()[1], limits)
    finally:
        await runner.cleanup()


async def _open(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/"
) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await asyncio.wait_for(reader.readexactly(length), DEADLINE)


async def _closed_by_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, trickle: bytes
) -> bool:
    """Send ``trickle`` one byte at a time (one every 50 ms) until the server closes the
    connection (True) or the deadline passes (False)."""
    deadline = time.monotonic() + DEADLINE
    sent = 0
    while time.monotonic() < deadline:
        if trickle:
            try:
                writer.write(trickle[sent % len(trickle) : sent % len(trickle) + 1])
                await writer.drain()
            except ConnectionError:
                return True
            sent += 1
        try:
            data = await asyncio.wait_for(reader.read(1024), 0.05)
        except TimeoutError:
            continue
        except ConnectionError:
            return True
        if data == b"":
            return True
    return False


async def test_headers_sent_one_byte_at_a_time_are_cut(served: Served) -> None:
    reader, writer = await _open(served.port)
    try:
        head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100_000
        assert await _closed_by_server(reader, writer, trickle=head)
    finally:
        writer.close()


async def test_a_silent_connection_is_closed(served: Served) -> None:
    reader, writer = await _open(served.port)
    try:
        assert await _closed_by_server(reader, writer, trickle=b"")
    finally:
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed(served: Served) -> None:
    reader, writer = await _open(served.port)
    try:
        assert (await _request(reader, writer))[0] == 200
        assert await _closed_by_server(reader, writer, trickle=b"")
    finally:
        writer.close()


async def test_a_request_longer_than_the_timeout_is_not_cut(served: Served) -> None:
    reader, writer = await _open(served.port)
    try:
        status, body = await _request(reader, writer, "/slow")
        assert status == 200 and json.loads(body) == {"ok": True}
    finally:
        writer.close()


async def test_an_idle_websocket_outlives_the_timeout(served: Served) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{served.port}/ws") as ws,
    ):
        await asyncio.sleep(TIMEOUT * 4)  # the behaviour under test: idle past the timeout
        await ws.send_str("still here")
        assert (await ws.receive(timeout=DEADLINE)).data == "still here"


@pytest.mark.parametrize(
    "line",
    [
        b"Authorization\x01: Bearer sk-lm-abcd1234:ABCDEFGHIJ0123456789",
        b"Authorization : Bearer sk-lm-abcd1234:ABCDEFGHIJ0123456789",
        b"Authorization: Bearer sk-lm-abcd1234:ABCDEFGHIJ0123456789\x7f",
        b"X-Long: " + b"sk-lm-abcd1234:ABCDEFGHIJ0123456789" * 300,
    ],
)
async def test_malformed_http_gets_a_json_envelope_quoting_nothing(
    served: Served, line: bytes
) -> None:
    reader, writer = await _open(served.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n" + line + b"\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", data
    assert b"application/json" in head
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("malformed HTTP request: ")
    assert b"ABCDEFGHIJ" not in body and b"sk-lm" not in body


async def _wait_open(limits: connections.ConnectionLimits, count: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while limits.open != count:
        assert time.monotonic() < deadline, f"{limits.open} connections open, not {count}"
        await asyncio.sleep(0.01)


async def _refused(port: int, source: str = "127.0.0.1") -> dict[str, object]:
    reader, writer = await _open(port, source)
    try:
        data = await asyncio.wait_for(reader.read(), DEADLINE)  # the server closes it
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), head
    return dict(json.loads(body)["error"])


# The connections these tests hold must outlive the header timeout: a long one.
@pytest.mark.parametrize("served", [(100, 3, DEADLINE)], indirect=True)
async def test_one_peer_gets_at_most_its_share(served: Served) -> None:
    held = [await _open(served.port) for _ in range(3)]
    try:
        for reader, writer in held:
            assert (await _request(reader, writer))[0] == 200
        error = await _refused(served.port)
        assert error["code"] == "server_busy"
        assert "too many open connections" in str(error["message"])
        # Another address is still served.
        reader, writer = await _open(served.port, "127.0.0.2")
        assert (await _request(reader, writer))[0] == 200
        writer.close()
        # A connection closed gives its place back.
        held.pop()[1].close()
        await _wait_open(served.limits, 2)
        reader, writer = await _open(served.port)
        held.append((reader, writer))
        assert (await _request(reader, writer))[0] == 200
    finally:
        for _, writer in held:
            writer.close()
    await _wait_open(served.limits, 0)


@pytest.mark.parametrize("served", [(2, 10, DEADLINE)], indirect=True)
async def test_total_connections_are_capped(served: Served) -> None:
    held = [await _open(served.port, source) for source in ("127.0.0.1", "127.0.0.2")]
    try:
        for reader, writer in held:
            assert (await _request(reader, writer))[0] == 200
        assert (await _refused(served.port, "127.0.0.3"))["code"] == "server_busy"
    finally:
        for _, writer in held:
            writer.close()


def test_fd_limit_raised_and_budget_below_it() -> None:
    soft = connections.raise_fd_limit()
    now_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == now_soft
    if hard != resource.RLIM_INFINITY:
        assert now_soft == hard
    budget = connections.connection_budget(10**9)
    assert budget <= max(1, now_soft - connections.FD_RESERVE)
    assert connections.connection_budget(5) <= 5
