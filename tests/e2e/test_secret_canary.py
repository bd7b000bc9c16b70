"""The secret canary: mint real tokens, throw malformed and hostile requests that carry them at
a real daemon over raw sockets (and the SDK websocket), then look for every secret everywhere
the daemon writes — every file under LMS_HOME, the live log stream, every response body, the
token listing. Any hit fails and names where the secret leaked.

Cases: malformed ``Authorization`` lines (control character, space before the colon, bare LF,
duplicated, other schemes, oversized), tokens in query strings, paths, ``Host``, ``Origin``,
methods, JSON bodies of several routes (model names, prompts, wrong types, unknown fields),
``%0a`` forged log lines in paths, and SDK auth packets carrying a token in the wrong field.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import LMS, Home

MODEL = "google/gemma-3-270m"
DEADLINE = 120.0
TOKEN_LINE = re.compile(r"sk-lm-[A-Za-z0-9]{8}:[A-Za-z0-9]{20}")
pytestmark = pytest.mark.model


def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes (every case asks for, or forces, a close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(raw)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: object = None,
    *,
    eol: bytes = b"\r\n",
) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: localhost", b"Connection: close"]
    lines += [f"{name}: {value}".encode() for name, value in headers or []]
    if body is not None:
        lines += [b"Content-Type: application/json", f"Content-Length: {len(data)}".encode()]
    return eol.join(lines) + eol + eol + data


def _with_body(request: bytes, body: bytes, content_type: str = "application/json") -> bytes:
    """``request`` (a bodiless one) with ``body`` as its raw body, malformed as it may be."""
    headers = f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return request.removesuffix(b"\r\n") + headers.encode() + body


def _battery(tokens: list[str]) -> Iterator[tuple[str, bytes]]:
    """(name, raw request) for each hostile case; ``tokens[0]`` is a valid all-permission token
    the well-formed requests authenticate with."""
    good, other, third = tokens[0], tokens[1], tokens[2]
    secret = other.split(":", 1)[1]
    bearer = f"Bearer {good}"
    auth = [("Authorization", bearer)]
    crlf = b"\r\n"
    head = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    yield "control char in header name", head + f"Authori\x01zation: {bearer}".encode() + crlf * 2
    yield "control char in value", head + f"Authorization: Bearer\x01{other}".encode() + crlf * 2
    yield "DEL in value", head + f"Authorization: Bearer {other}\x7f".encode() + crlf * 2
    yield "space before colon", head + f"Authorization : Bearer {other}".encode() + crlf * 2
    yield "tab before colon", head + f"Authorization\t: Bearer {other}".encode() + crlf * 2
    yield (
        "bare LF",
        _request("GET", "/v1/models", [("Authorization", f"Bearer {other}")], eol=b"\n"),
    )
    yield "bare CR", head + f"Authorization: Bearer {other}\rX: y".encode() + crlf * 2
    yield "folded line", head + f"X-A: b\r\n Authorization: Bearer {other}".encode() + crlf * 2
    yield (
        "duplicated",
        _request(
            "GET", "/v1/models", [("Authorization", bearer), ("Authorization", f"Bearer {other}")]
        ),
    )
    yield "no scheme", _request("GET", "/v1/models", [("Authorization", other)])
    yield (
        "basic scheme",
        _request(
            "GET",
            "/v1/models",
            [("Authorization", "Basic " + base64.b64encode(other.encode()).decode())],
        ),
    )
    yield "token scheme", _request("GET", "/v1/models", [("Authorization", f"Token {other}")])
    yield "secret alone", _request("GET", "/v1/models", [("Authorization", f"Bearer {secret}")])
    yield (
        "oversized header",
        head + f"Authorization: Bearer {other}{'x' * 9000}".encode() + crlf * 2,
    )
    yield "many headers", head + (f"X-K: {other}\r\n" * 200).encode() + crlf
    yield (
        "x-api-key on messages",
        _request(
            "POST", "/v1/messages", [("x-api-key", other)], {"model": other, "max_tokens": "x"}
        ),
    )
    yield "api_key in query", _request("GET", f"/v1/models?api_key={other}")
    yield "api_key in query, authorised", _request("GET", f"/v1/models?api_key={third}", auth)
    yield "token in path", _request("GET", f"/v1/{other}/models", auth)
    yield "encoded token in path", _request("GET", "/v1/" + urllib.parse.quote(other, safe=""))
    yield "secret in path", _request("GET", f"/api/v1/models/{secret}", auth)
    yield (
        "forged log line",
        _request(
            "GET",
            "/x%0a2026-01-01%2000:00:00,000%20WARNING%20lms.auth:%20FORGED%20"
            + urllib.parse.quote(other, safe=""),
        ),
    )
    yield "forged CR line", _request("GET", f"/x%0d%0aFORGED%20{other}", auth)
    yield "raw LF in path", head.replace(b"/v1/models", f"/a\n{other}".encode()) + crlf
    yield "token in Host", head.replace(b"localhost", f"{secret}.example".encode()) + crlf
    yield (
        "token in Host port",
        (f"GET /health HTTP/1.1\r\nHost: localhost:{secret}\r\nConnection: close\r\n\r\n".encode()),
    )
    yield "token in Origin", _request("GET", "/v1/models", [("Origin", f"http://{other}")])
    yield "secret as method", _request(secret, "/v1/models", auth)
    yield "token in request line", f"GET /v1/models {other}\r\n\r\n".encode()
    yield "token in version", f"GET /v1/models HTTP/{secret}\r\n\r\n".encode()
    yield (
        "model name",
        _request("POST", "/v1/chat/completions", auth, {"model": other, "messages": []}),
    )
    yield (
        "model name, native",
        _request("POST", "/api/v1/chat", auth, {"model": other, "input": other}),
    )
    yield (
        "wrong types",
        _request(
            "POST", "/v1/chat/completions", auth, {"model": MODEL, "messages": other, "user": other}
        ),
    )
    yield (
        "wrong nested types",
        _request(
            "POST",
            "/v1/chat/completions",
            auth,
            {"model": MODEL, "messages": [{"role": other, "content": 3}]},
        ),
    )
    yield (
        "unknown fields",
        _request("POST", "/v1/embeddings", auth, {"model": other, "input": 3, other: other}),
    )
    yield (
        "prompt carries a token",
        _request(
            "POST",
            "/v1/completions",
            auth,
            {"model": MODEL, "prompt": f"My key is {other} and {secret}.", "max_tokens": 1},
        ),
    )
    yield (
        "chat carries a token",
        _request(
            "POST",
            "/v1/chat/completions",
            auth,
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Authorization: Bearer {other}"}],
                "max_tokens": 1,
            },
        ),
    )
    broken = f'{{"model": "{MODEL}", "prompt": "{other}'.encode()
    yield "bad JSON around a token", _with_body(_request("POST", "/v1/completions", auth), broken)
    yield (
        "text/plain body",
        _with_body(_request("POST", "/v1/completions", auth), other.encode(), "text/plain"),
    )
    yield (
        "model admin",
        _request("POST", "/api/v1/models/load", auth, {"model": other, "context_length": other}),
    )


async def _sdk_cases(
    port: int, tokens: list[str], endpoints: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """SDK websocket auth packets with a token where it does not belong, each followed by calls
    of ``endpoints`` whose arguments carry a token: (the auth replies, the other frames)."""
    good, other = tokens[0], tokens[1]
    good_id, good_secret = good[6:].split(":")
    packets = [
        {"authVersion": 1, "clientIdentifier": other, "clientPasskey": other},
        {"authVersion": 1, "clientIdentifier": other.split(":")[1], "clientPasskey": "x"},
        {"authVersion": 1, "clientIdentifier": good_id, "clientPasskey": good_secret + "x"},
        {"authVersion": other, "clientIdentifier": other},
        {"authVersion": 1, "clientIdentifier": good_id, "clientPasskey": good_secret},
    ]
    replies: list[str] = []
    frames: list[str] = []
    async with aiohttp.ClientSession() as session:
        for packet in packets:
            async with session.ws_connect(
                f"http://127.0.0.1:{port}/llm", headers={"Host": "localhost"}
            ) as ws:
                await ws.send_str(json.dumps(packet))
                # Then calls that carry the token in their arguments and in the endpoint name.
                for call_id, endpoint in enumerate(endpoints, 1):
                    call = {
                        "type": "rpcCall",
                        "endpoint": endpoint,
                        "callId": call_id,
                        "parameter": {
                            "specifier": {"type": "query", "query": {"identifier": other}}
                        },
                    }
                    await ws.send_str(json.dumps(call))
                while True:
                    try:
                        message = await asyncio.wait_for(ws.receive(), 30)
                    except TimeoutError:
                        break
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    is_reply = '"success"' in message.data and '"type"' not in message.data
                    (replies if is_reply else frames).append(message.data)
                    # Calls are answered in any order (an unknown endpoint at once, a lookup
                    # later): wait for every one of them, or for the socket to close.
                    answered = {
                        n
                        for n in range(1, len(endpoints) + 1)
                        for f in frames
                        if f'"callId":{n},' in f
                    }
                    if len(answered) == len(endpoints):
                        break
    return replies, frames


def _leaks(secrets: list[str], where: str, data: bytes) -> list[str]:
    return [f"{where}: {secret[:10]}…" for secret in secrets if secret.encode() in data]


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue  # data/models links to the shared read-only model folder
        yield path


def test_no_secret_reaches_a_log_a_file_a_stream_or_a_body(home: Home) -> None:
    assert home.lms("auth", "require", "on").returncode == 0
    tokens = []
    for i, perm in enumerate(["all", "inference", "models", "inference"]):
        done = home.lms("token", "create", f"canary-{i}", "--perm", perm, "--quiet")
        assert done.returncode == 0, done.stderr
        tokens.append(done.stdout.strip())
        assert TOKEN_LINE.fullmatch(tokens[-1])
    secrets = tokens + [t.split(":", 1)[1] for t in tokens]
    # Every secret must also be findable: the search works (they are in this list) but nowhere
    # the daemon writes.
    start = home.lms("server", "start", "--port", "0")
    assert start.returncode == 0, start.stderr
    port = urllib.parse.urlsplit(home.server_url()).port
    assert port is not None
    follower = subprocess.Popen(
        [LMS, "log", "stream", "--json"],
        env=home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    bodies: dict[str, bytes] = {}
    try:
        assert follower.stderr is not None
        assert b"streaming logs" in follower.stderr.readline()  # subscribed: no race below
        for name, raw in _battery(tokens):
            bodies[name] = _exchange(port, raw)
        # The frames answering calls are checked by the test below; the auth replies here.
        replies, _ = asyncio.run(_sdk_cases(port, tokens, ("getModelInfo", "unloadModel")))
        assert len(replies) == 5, replies
        bodies["sdk auth replies"] = "\n".join(replies).encode()
        listing = home.lms("token", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        bodies["lms token list"] = listing.stdout.encode()
        audit = home.lms("auth", "audit", "--json")
        assert audit.returncode == 0, audit.stderr
        bodies["lms auth audit"] = audit.stdout.encode() + audit.stderr.encode()
    finally:
        follower.terminate()
        stream, stream_err = follower.communicate(timeout=60)
    assert home.lms("daemon", "down").returncode in (0, 3)

    # The battery did reach the server: most cases got an HTTP answer, the prompts ran.
    answered = [name for name, body in bodies.items() if body.startswith(b"HTTP/")]
    assert len(answered) >= len(bodies) - 3, sorted(set(bodies) - set(answered))
    assert b"llm.prediction.input" in stream and b"server.request" in stream
    assert bodies["prompt carries a token"].startswith(b"HTTP/1.1 200 "), bodies[
        "prompt carries a token"
    ][:300]
    daemon_logs = [p for p in _files(home.root) if p.name.startswith("daemon.log")]
    assert daemon_logs and any(b"FORGED" in p.read_bytes() for p in daemon_logs)
    for path in daemon_logs:
        for line in path.read_bytes().splitlines():
            assert not line.startswith(b"2026-01-01 00:00:00,000"), f"forged line in {path}"

    leaks: list[str] = []
    for path in _files(home.root):
        leaks += _leaks(secrets, str(path.relative_to(home.root)), path.read_bytes())
    leaks += _leaks(secrets, "lms log stream", stream + stream_err)
    for name, body in bodies.items():
        leaks += _leaks(secrets, f"response to {name!r}", body)
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)


def test_sdk_error_frames_do_not_echo_a_token(home: Home) -> None:
    assert home.lms("auth", "require", "on").returncode == 0
    done = home.lms("token", "create", "canary", "--perm", "all", "--quiet")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    start = home.lms("server", "start", "--port", "0")
    assert start.returncode == 0, start.stderr
    port = urllib.parse.urlsplit(home.server_url()).port
    assert port is not None
    _, frames = asyncio.run(_sdk_cases(port, [token, token, token], ("getModelInfo", token)))
    assert home.lms("daemon", "down").returncode in (0, 3)
    assert any("rpcEndpointUnknown" in frame for frame in frames), frames
    assert any("model_not_found" in frame for frame in frames), frames
    secret = token.split(":", 1)[1]
    assert not [frame for frame in frames if secret in frame]
