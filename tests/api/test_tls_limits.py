"""Connection caps of a TLS listener over real sockets (docs/LIMITS.md): a connection counts from
its TCP accept, through its handshake, to its close, so connections that never finish (or never
start) a handshake cannot take every file descriptor; whatever way a handshake ends, its place is
given back.

The application is a one-route plumbing app and the certificate comes from a CA made here: what
is under test is the site and its handshakes (lms/daemon/connections.py, lms/daemon/handshakes.py).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from pki import Pki, make_pki

from lms.daemon import connections
from lms.daemon.handshakes import Handshakes

DEADLINE = 60.0  # generous: how long a test waits for something that must happen
SHORT = 0.5  # the handshake timeout of the test about timeouts
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def client_tls(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


@dataclass
class Served:
    port: int
    limits: connections.ConnectionLimits
    handshakes: Handshakes
    runner: web.AppRunner


async def _scheme(request: web.Request) -> web.Response:
    return web.json_response({"scheme": request.scheme})


@pytest.fixture
async def served(request: pytest.FixtureRequest, pki: Pki) -> AsyncIterator[Served]:
    total, per_peer, handshake_timeout = getattr(request, "param", (100, 3, DEADLINE))
    app = web.Application()
    app.router.add_get("/", _scheme)
    args = connections.handler_args(DEADLINE)  # these tests are about handshakes, not headers
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, **args)
    await runner.setup()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.cert, pki.key)
    sock = socket.create_server((HOST, 0))
    limits = connections.ConnectionLimits(total, per_peer)
    site = connections.GuardedSite(
        runner,
        sock,
        limits=limits,
        handler_args=args,
        ssl_context=server_tls,
        handshake_timeout=handshake_timeout,
    )
    await site.start()
    assert site.handshakes is not None
    try:
        yield Served(sock.getsockname()[1], limits, site.handshakes, runner)
    finally:
        if runner.server is not None:  # a test may have shut it down itself
            await runner.cleanup()


async def _open(port: int, source: str = HOST) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP connection that starts no handshake."""
    return await asyncio.open_connection(HOST, port, local_addr=(source, 0))


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), DEADLINE):
            data += chunk
    except ConnectionResetError:
        pass
    return data


async def _https_get(port: int, tls: ssl.SSLContext, source: str = HOST) -> tuple[int, object]:
    connector = aiohttp.TCPConnector(ssl=tls, local_addr=(source, 0))
    timeout = aiohttp.ClientTimeout(total=DEADLINE)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get(f"https://{HOST}:{port}/") as response,
    ):
        return response.status, await response.json()


async def _get_over(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: ssl.SSLContext
) -> bytes:
    """Finish the handshake of a held connection now and send one request on it."""
    await writer.start_tls(tls, server_hostname=HOST, ssl_handshake_timeout=DEADLINE)
    writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    return await _until_closed(reader)


async def _wait_open(limits: connections.ConnectionLimits, count: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while limits.open != count:
        assert time.monotonic() < deadline, f"{limits.open} connections open, not {count}"
        await asyncio.sleep(0.01)


async def test_an_https_request_is_served_and_gives_its_place_back(
    served: Served, client_tls: ssl.SSLContext
) -> None:
    assert await _https_get(served.port, client_tls) == (200, {"scheme": "https"})
    await _wait_open(served.limits, 0)


def _client_records(tls: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return tls.wrap_bio(incoming, outgoing, server_hostname=HOST), incoming, outgoing


async def test_a_request_sent_with_the_end_of_the_handshake_is_served(
    served: Served, client_tls: ssl.SSLContext
) -> None:
    # The request leaves in the same write as the client's last handshake message, so it can
    # reach the server before aiohttp's handler has the connection: it must wait, not be lost.
    reader, writer = await _open(served.port)
    try:
        client, incoming, outgoing = _client_records(client_tls)
        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                await writer.drain()
                data = await asyncio.wait_for(reader.read(65536), DEADLINE)
                assert data, "the server closed the connection during the handshake"
                incoming.write(data)
        client.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        writer.write(outgoing.read())
        await writer.drain()
        answer = b""
        while True:
            try:
                chunk = client.read(65536)
            except ssl.SSLWantReadError:
                data = await asyncio.wait_for(reader.read(65536), DEADLINE)
                if not data:
                    break
                incoming.write(data)
            except ssl.SSLZeroReturnError:
                break
            else:
                if not chunk:  # the server's close_notify
                    break
                answer += chunk
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b'{"scheme": "https"}')
    await _wait_open(served.limits, 0)


async def test_stalled_handshakes_count_and_the_next_is_closed_at_once(
    served: Served, client_tls: ssl.SSLContext
) -> None:
    stalled = [await _open(served.port) for _ in range(3)]
    try:
        await _wait_open(served.limits, 3)
        reader, writer = await _open(served.port)
        try:
            assert await _until_closed(reader) == b""  # closed without a word, no plaintext 503
        finally:
            writer.close()
        assert served.limits.refused == 1
        # Another address is still served.
        assert await _https_get(served.port, client_tls, "127.0.0.2") == (
            200,
            {"scheme": "https"},
        )
        # The stalled ones were kept open all along: each can still finish and be served.
        for reader, writer in stalled:
            assert (await _get_over(reader, writer, client_tls)).startswith(b"HTTP/1.1 200 ")
    finally:
        for _, writer in stalled:
            writer.close()
    await _wait_open(served.limits, 0)


@pytest.mark.parametrize("served", [(2, 10, DEADLINE)], indirect=True)
async def test_total_connections_count_handshakes(served: Served) -> None:
    stalled = [await _open(served.port, source) for source in ("127.0.0.1", "127.0.0.2")]
    try:
        await _wait_open(served.limits, 2)
        reader, writer = await _open(served.port, "127.0.0.3")
        try:
            assert await _until_closed(reader) == b""
        finally:
            writer.close()
        assert served.limits.refused == 1
    finally:
        for _, writer in stalled:
            writer.close()
    await _wait_open(served.limits, 0)


def _client_hello(tls: ssl.SSLContext) -> bytes:
    client, _, outgoing = _client_records(tls)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("ending", ["garbage", "half_hello", "gone_at_once", "reset"])
async def test_a_handshake_that_ends_badly_gives_its_place_back(
    served: Served, client_tls: ssl.SSLContext, ending: str
) -> None:
    stalled = [await _open(served.port) for _ in range(2)]
    try:
        await _wait_open(served.limits, 2)
        # More times than the peer's cap: a single leaked place would refuse the last ones.
        for _ in range(5):
            reader, writer = await _open(served.port)
            try:
                if ending == "garbage":
                    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    await _until_closed(reader)  # the server closes it
                elif ending == "half_hello":
                    hello = _client_hello(client_tls)
                    writer.write(hello[: len(hello) // 2])
                    await writer.drain()
                elif ending == "reset":  # an RST, not a FIN
                    linger = struct.pack("ii", 1, 0)
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, linger
                    )
            finally:
                writer.close()
            await _wait_open(served.limits, 2)
        assert served.limits.refused == 0
        assert await _https_get(served.port, client_tls) == (200, {"scheme": "https"})
    finally:
        for _, writer in stalled:
            writer.close()
    await _wait_open(served.limits, 0)


@pytest.mark.parametrize("served", [(100, 3, SHORT)], indirect=True)
async def test_stalled_handshakes_time_out_and_give_their_places_back(
    served: Served, client_tls: ssl.SSLContext
) -> None:
    stalled = [await _open(served.port) for _ in range(3)]
    try:
        for reader, _ in stalled:
            assert await _until_closed(reader) == b""  # the server gave up on it
    finally:
        for _, writer in stalled:
            writer.close()
    await _wait_open(served.limits, 0)
    # The next handshake must not race the short timeout on a busy machine.
    served.handshakes.timeout = DEADLINE
    assert await _https_get(served.port, client_tls) == (200, {"scheme": "https"})
    assert served.limits.refused == 0


# Handshakes that would outlast the test by far: only the shutdown can end them in time.
@pytest.mark.parametrize("served", [(100, 3, 100 * DEADLINE)], indirect=True)
async def test_shutdown_cuts_handshakes_and_gives_their_places_back(served: Served) -> None:
    stalled = [await _open(served.port) for _ in range(2)]
    try:
        await _wait_open(served.limits, 2)
        await asyncio.wait_for(served.runner.cleanup(), DEADLINE)
        assert served.limits.open == 0
        for reader, _ in stalled:
            assert await _until_closed(reader) == b""
    finally:
        for _, writer in stalled:
            writer.close()
