"""Browser and network defences (README: Settings): they hold with auth on or off."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from lms.api import middlewares


def write_config(home: Path, text: str) -> None:
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def test_foreign_origin_refused(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "forbidden"


async def test_text_plain_post_refused(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/completions",
        data=b'{"model": "google/gemma-3-270m", "prompt": "x"}',
        headers={"Content-Type": "text/plain"},
    )
    assert response.status == 415
    assert (await response.json())["error"]["code"] == "unsupported_media_type"


async def test_form_post_refused(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/v1/completions", data={"prompt": "x"})
    assert response.status == 415


async def test_wrong_host_refused(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/v1/models", headers={"Host": "attacker.example:1234"})
    assert response.status == 403
    assert "attacker.example" in (await response.json())["error"]["message"]


async def test_loopback_hosts_accepted(client: TestClient) -> None:  # type: ignore[type-arg]
    for host in ("localhost:1234", "127.0.0.1", "[::1]:1234", "LOCALHOST"):
        response = await client.get("/health", headers={"Host": host})
        assert response.status == 200, host


async def test_allowed_hosts_setting(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Path,
) -> None:
    assert (await client.get("/health", headers={"Host": "proxy.internal"})).status == 403
    write_config(lms_home, '[server]\nallowed_hosts = ["proxy.internal"]\n')
    assert (await client.get("/health", headers={"Host": "proxy.internal"})).status == 200


async def test_cors_only_for_listed_origins(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Path,
) -> None:
    origin = "http://localhost:3000"
    write_config(lms_home, f'[server]\ncors = true\ncors_origins = ["{origin}"]\n')
    preflight = await client.options(
        "/v1/chat/completions",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    response = await client.get("/v1/models", headers={"Origin": origin})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    other = await client.get("/v1/models", headers={"Origin": "http://localhost:4000"})
    assert other.status == 403
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_listed_origin_without_cors_gets_no_cors_headers(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Path,
) -> None:
    origin = "http://localhost:3000"
    write_config(lms_home, f'[server]\ncors = false\ncors_origins = ["{origin}"]\n')
    response = await client.get("/v1/models", headers={"Origin": origin})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize(
    "host",
    [
        "[::1].evil.example",
        "[::1]evil",
        "[::1]:80:80",
        "[::1",
        "[not-an-address]",
        "localhost.evil",
        "localhost:80:80",
        "localhost:http",
        "localhost:123456",
        "localhost@evil.example",
        "localhost/evil",
        "evil.example#localhost",
        "127.0.0.1.evil.example",
        "::1",
    ],
)
async def test_host_parsed_strictly(client: TestClient, host: str) -> None:  # type: ignore[type-arg]
    response = await client.get("/health", headers={"Host": host})
    assert response.status == 403, host
    assert (await response.json())["error"]["code"] == "forbidden"


async def _raw_get(port: int, head: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        data = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split(b" ")[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("host", [b"localhost\x01", b"local\x7fhost", b"localhost\x1b:80"])
async def test_host_with_control_characters_refused(
    client: TestClient,  # type: ignore[type-arg]
    host: bytes,
) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    status, body = await _raw_get(client.server.port or 0, head)
    assert status in (400, 403), body  # aiohttp's parser may refuse it first
    assert b"\x01" not in body and b"\x1b" not in body and b"\x7f" not in body


async def test_echoed_input_is_redacted(client: TestClient) -> None:  # type: ignore[type-arg]
    token = "sk-lm-abcd1234:" + "Z9" * 10
    for response in (
        await client.get(f"/v1/{token}/x?api_key={token}"),
        await client.get("/v1/models", headers={"Origin": f"http://{token}"}),
        await client.get("/v1/models", headers={"Host": f"{'Z9' * 10}.example"}),
    ):
        text = await response.text()
        assert response.status in (403, 404), text
        assert "Z9" * 10 not in text and "api_key" not in text


async def test_a_body_sent_too_slowly_gets_408_and_a_close(
    client: TestClient,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(middlewares, "BODY_GRACE_SECONDS", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        answer = b""
        closed = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # one byte every 50 ms until the server answers
            try:
                writer.write(b" ")
                await writer.drain()
                chunk = await asyncio.wait_for(reader.read(65536), 0.05)
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            answer += chunk
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert closed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
