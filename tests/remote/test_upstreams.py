"""Self-tests of the upstream servers the remote-engine tests forward to (upstreams.py).

Each upstream starts, answers as an OpenAI-compatible server does (the official ``openai``
client talks to it), misbehaves when told to, and is gone when its fixture ends.
"""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import tomllib
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from .upstreams import (
    DEFAULT_MODEL_KEY,
    LEAK_MARKERS,
    FakeUpstream,
    Fault,
    LlamaCppServer,
    LmsUpstream,
    add_remotes,
    get_json,
    process_alive,
    remotes_toml,
)

MakeFake = Callable[..., Awaitable[FakeUpstream]]
CHAT = "/v1/chat/completions"


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def assert_key_file(path: Path | None, key: str) -> None:
    assert path is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key + "\n"


async def sse_events(response: aiohttp.ClientResponse) -> list[Any]:
    """The ``data:`` payloads of a stream, parsed ("[DONE]" kept as the string)."""
    events: list[Any] = []
    async for line in response.content:
        if line.startswith(b"data: "):
            data = line[6:].strip().decode()
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def chat_body(model: str = "fake-model", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "ping pong"}], **extra}


# --- FakeUpstream ----------------------------------------------------------------------------


async def test_fake_speaks_openai_to_the_official_client(make_fake_upstream: MakeFake) -> None:
    fake = await make_fake_upstream(key="sk-up-1", models=["m1", "m2"])
    assert_key_file(fake.key_file, "sk-up-1")
    async with openai.AsyncOpenAI(base_url=f"{fake.base_url}/v1", api_key="sk-up-1") as client:
        assert [m.id async for m in client.models.list()] == ["m1", "m2"]
        chat = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hello there"}]
        )
        assert chat.choices[0].message.content == "echo: hello there"
        assert chat.usage is not None and chat.usage.completion_tokens == 3
        stream = await client.chat.completions.create(
            model="m2", messages=[{"role": "user", "content": "a b c"}], stream=True
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(p or "" for p in pieces) == "echo: a b c"
        done = await client.completions.create(model="m1", prompt="once upon")
        assert done.choices[0].text == "echo: once upon"
        vectors = await client.embeddings.create(model="m2", input=["x", "y", "x"])
        assert [len(v.embedding) for v in vectors.data] == [8, 8, 8]
        assert vectors.data[0].embedding == vectors.data[2].embedding != vectors.data[1].embedding
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="m3", messages=[])
        assert missing.value.code == "model_not_found"
    async with openai.AsyncOpenAI(base_url=f"{fake.base_url}/v1", api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    seen = fake.received[1]
    assert (seen.method, seen.path, seen.json["model"]) == ("POST", CHAT, "m1")
    assert seen.headers["authorization"] == "Bearer sk-up-1"
    assert fake.paths_seen().count(CHAT) == 3


async def test_fake_models_rename_and_health(make_fake_upstream: MakeFake) -> None:
    fake = await make_fake_upstream(key="k")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{fake.base_url}/v1/models") as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "invalid_api_key"
        headers = {"Authorization": "Bearer k"}
        fake.models = ["renamed"]
        async with session.get(f"{fake.base_url}/v1/models", headers=headers) as response:
            assert [m["id"] for m in (await response.json())["data"]] == ["renamed"]
        async with session.get(f"{fake.base_url}/health") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        fake.healthy = False
        async with session.get(f"{fake.base_url}/health") as response:
            assert response.status == 503


@pytest.mark.parametrize("usage", ["openai", "always", "never"])
async def test_fake_stream_usage_follows_stream_options(
    make_fake_upstream: MakeFake, usage: str
) -> None:
    fake = await make_fake_upstream(usage=usage)
    async with aiohttp.ClientSession() as session:
        found = []
        for include in (None, False, True):
            options = {} if include is None else {"stream_options": {"include_usage": include}}
            body = chat_body(stream=True, **options)
            async with session.post(f"{fake.base_url}{CHAT}", json=body) as response:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                events = await sse_events(response)
            assert events[-1] == "[DONE]"
            assert events[-2]["choices"] in (
                [],
                [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            )
            found.append([e for e in events[:-1] if "usage" in e])
    if usage == "never":
        assert found == [[], [], []]
    elif usage == "openai":  # only as a last chunk with no choices, and only when asked
        assert found[:2] == [[], []] and len(found[2]) == 1 and found[2][0]["choices"] == []
    else:
        assert [len(f) for f in found] == [1, 1, 2]


async def test_fake_errors_leak_and_envelopes(make_fake_upstream: MakeFake) -> None:
    fake = await make_fake_upstream()
    async with aiohttp.ClientSession() as session:
        for body_format in ("json", "text"):
            fake.fail(Fault.ERROR, status=500, body_format=body_format, times=1)
            async with session.post(f"{fake.base_url}{CHAT}", json=chat_body()) as response:
                text = await response.text()
            assert response.status == 500
            assert all(marker in text for marker in LEAK_MARKERS), text
        fake.fail(Fault.ERROR, status=429, times=2)
        for _ in range(2):
            async with session.post(f"{fake.base_url}/v1/embeddings", json={}) as response:
                assert response.status == 429 and response.headers["Retry-After"] == "1"
                assert (await response.json())["error"]["code"] == "rate_limit_exceeded"
        async with session.post(f"{fake.base_url}{CHAT}", json=chat_body()) as response:
            assert response.status == 200  # `times` ran out
        fake.fail(Fault.ERROR, status=503, paths={"/v1/models"})
        async with session.get(f"{fake.base_url}/v1/models") as response:
            assert response.status == 503
        async with session.post(f"{fake.base_url}{CHAT}", json=chat_body()) as response:
            assert response.status == 200  # other paths answer
        fake.heal()
        async with session.get(f"{fake.base_url}/v1/models") as response:
            assert response.status == 200


async def test_fake_redirect_is_only_offered(make_fake_upstream: MakeFake) -> None:
    fake = await make_fake_upstream()
    fake.fail(Fault.REDIRECT)
    async with aiohttp.ClientSession() as session:
        url = f"{fake.base_url}{CHAT}"
        async with session.post(url, json=chat_body(), allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"] == f"{fake.base_url}/redirected{CHAT}"
    assert fake.paths_seen() == [CHAT]  # a client that followed it would show here


async def test_fake_hangs_until_the_client_leaves(make_fake_upstream: MakeFake) -> None:
    fake = await make_fake_upstream()
    fake.fail(Fault.HANG_BEFORE_HEADERS, times=1)
    assert fake.in_flight == 0
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(session.post(f"{fake.base_url}{CHAT}", json=chat_body()))
        while not fake.received:
            await asyncio.sleep(0.01)
        assert not request.done() and fake.in_flight == 1
        request.cancel()  # the client gives up: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await request
        while not fake.disconnects:
            await asyncio.sleep(0.01)
        assert fake.disconnects == [CHAT]

        fake.fail(Fault.HANG_MID_STREAM, after_chunks=2, times=1)
        async with session.post(f"{fake.base_url}{CHAT}", json=chat_body(stream=True)) as got:
            first = await got.content.readline()
            assert first.startswith(b"data: ") and b'"role": "assistant"' in first
        while len(fake.disconnects) < 2:  # the response closed, unread: the fake sees it
            await asyncio.sleep(0.01)

        fake.fail(Fault.HANG_MID_STREAM, paths={"/v1/models"}, times=1)
        async with session.get(f"{fake.base_url}/v1/models") as got:
            assert got.content_length is not None
            half = await got.content.readany()  # half the body came, the rest never will
            assert 0 < len(half) < got.content_length
        while len(fake.disconnects) < 3:
            await asyncio.sleep(0.01)
    assert fake.disconnects == [CHAT, CHAT, "/v1/models"] and fake.max_in_flight == 1


async def test_fake_cuts_streams_and_bodies(make_fake_upstream: MakeFake) -> None:
    fake = await make_fake_upstream(reply="one two three four")
    async with aiohttp.ClientSession() as session:
        fake.fail(Fault.CUT_MID_STREAM, after_chunks=2, times=1)
        lines = []
        async with session.post(f"{fake.base_url}{CHAT}", json=chat_body(stream=True)) as got:
            with pytest.raises(aiohttp.ClientPayloadError):
                async for line in got.content:
                    lines.append(line)
        events = [json.loads(line[6:]) for line in lines if line.startswith(b"data: ")]
        assert [e["choices"][0]["delta"].get("content") for e in events] == ["one ", "two "]

        fake.fail(Fault.CUT_MID_STREAM, times=1)
        async with session.post(f"{fake.base_url}{CHAT}", json=chat_body()) as got:
            with pytest.raises(aiohttp.ClientPayloadError):
                await got.read()


async def test_fake_huge_line_and_body(make_fake_upstream: MakeFake) -> None:
    fake = await make_fake_upstream(reply="short")
    size = 10 << 20
    async with aiohttp.ClientSession(read_bufsize=1 << 16) as session:
        fake.fail(Fault.HUGE_LINE, size=size, times=1)
        async with session.post(f"{fake.base_url}{CHAT}", json=chat_body(stream=True)) as got:
            raw = await got.read()
        lines = raw.split(b"\n")
        assert max(len(line) for line in lines) > size
        assert lines[-3:] == [b"data: [DONE]", b"", b""]

        fake.fail(Fault.HUGE_BODY, size=size, times=1)
        async with session.post(f"{fake.base_url}{CHAT}", json=chat_body()) as got:
            body = await got.read()
        assert len(body) > size
        assert json.loads(body)["choices"][0]["message"]["content"] == "x" * size


def test_threaded_fake_serves_sync_tests(
    make_threaded_fake_upstream: Callable[..., FakeUpstream],
) -> None:
    fake = make_threaded_fake_upstream(models=["a"])
    assert get_json(f"{fake.base_url}/v1/models") == (
        200,
        {"object": "list", "data": [{"id": "a", "object": "model", "created": 1700000000,
                                     "owned_by": "fake"}]},
    )  # fmt: skip
    request = urllib.request.Request(
        f"{fake.base_url}/v1/completions",
        json.dumps({"model": "a", "prompt": "hi"}).encode(),
        {"Content-Type": "application/json", "X-Forwarded-For": "1.2.3.4"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.loads(response.read())["choices"][0]["text"] == "echo: hi"
    assert fake.wait_for(1, "/v1/completions")[0].headers["x-forwarded-for"] == "1.2.3.4"


async def test_a_closed_fake_is_gone() -> None:
    async with FakeUpstream(key="k") as fake:
        port, key_file = fake.port, fake.key_file
        assert key_file is not None and key_file.exists()
    assert refuses_connections(port)
    assert not key_file.exists()
    threaded = FakeUpstream()
    with threaded.in_thread():
        port = threaded.port
    assert refuses_connections(port)


@dataclass
class Address:
    base_url: str
    key_file: Path | None = None


def test_gate_config_tables(tmp_path: Path) -> None:
    one = Address("http://127.0.0.1:1001")
    two = Address("http://127.0.0.1:1002", tmp_path / "two.key")
    text = remotes_toml({"gpu": [one, two], "cpu": two})
    assert tomllib.loads(text) == {
        "remotes": {
            "gpu": {"urls": ["http://127.0.0.1:1001", "http://127.0.0.1:1002"]},
            "cpu": {"urls": ["http://127.0.0.1:1002"], "key_file": str(two.key_file)},
        }
    }
    config = tmp_path / "config" / "config.toml"
    config.parent.mkdir()
    config.write_text("[auth]\nrequired = true\n")
    add_remotes(config, {"gpu": one})
    assert tomllib.loads(config.read_text()) == {
        "auth": {"required": True},
        "remotes": {"gpu": {"urls": ["http://127.0.0.1:1001"]}},
    }


# --- the real upstreams ----------------------------------------------------------------------


def real_chat(base_url: str, key: str, model: str) -> openai.types.chat.ChatCompletion:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0) as client:
        return client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8,
            temperature=0,
        )


@pytest.mark.model
def test_llama_cpp_server_answers_and_goes(
    make_llama_cpp_server: Callable[..., LlamaCppServer],
) -> None:
    server = make_llama_cpp_server(api_key="sk-llama-1")
    assert_key_file(server.key_file, "sk-llama-1")
    assert server.model_id.endswith("gemma-3-270m-q4_k_m.gguf")  # its path, without an alias
    assert get_json(f"{server.base_url}/v1/models")[0] == 401
    chat = real_chat(server.base_url, "sk-llama-1", server.model_id)
    assert chat.choices[0].message.content
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 8
    # What a gate meets there: no usage on streams, even when asked for; no /health; and a bad
    # body answered 500 with the server's own file paths in the message.
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-llama-1") as client:
        stream = client.chat.completions.create(
            model=server.model_id,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)
    assert get_json(f"{server.base_url}/health", "sk-llama-1")[0] == 404
    bad = urllib.request.Request(
        f"{server.base_url}{CHAT}",
        json.dumps({"messages": "not a list"}).encode(),
        {"Authorization": "Bearer sk-llama-1", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=60)
    with refused.value as error:
        assert error.code == 500
        assert "llama_cpp/server/app.py" in error.read().decode()
    assert server.proc is not None
    pid, port = server.proc.pid, server.port
    server.stop()
    assert server.proc.returncode is not None
    assert not Path(f"/proc/{pid}").exists()
    assert refuses_connections(port)


@pytest.mark.model
def test_llama_cpp_server_finishes_concurrent_streams(
    make_llama_cpp_server: Callable[..., LlamaCppServer],
) -> None:
    """As started here (interrupt_requests off), a waiting request does not cut a running
    stream short: both streams end with a finish_reason, however they overlap."""
    server = make_llama_cpp_server()

    def stream(_: int) -> list[str | None]:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none") as client:
            chunks = client.chat.completions.create(
                model="any",
                messages=[{"role": "user", "content": "Write a poem about the sea."}],
                max_tokens=16,
                stream=True,
            )
            return [c.choices[0].finish_reason for c in chunks if c.choices]

    with ThreadPoolExecutor(2) as pool:
        endings = list(pool.map(stream, range(2)))
    assert [e[-1] for e in endings] == ["length", "length"], endings


@pytest.mark.model
def test_llama_cpp_server_killed_abruptly(
    make_llama_cpp_server: Callable[..., LlamaCppServer],
) -> None:
    server = make_llama_cpp_server(alias="gemma")
    assert server.model_id == "gemma" and server.key_file is None
    server.kill()
    assert server.proc is not None and server.proc.returncode == -9
    assert refuses_connections(server.port)
    loading = make_llama_cpp_server(start=False)
    loading.start(wait=False)  # killed while it loads (or just after: either way, gone)
    loading.kill()
    assert loading.proc is not None and loading.proc.returncode == -9


@pytest.mark.model
def test_lms_upstream_answers_and_goes(make_lms_upstream: Callable[..., LmsUpstream]) -> None:
    upstream = make_lms_upstream()
    assert upstream.key_file is not None
    assert stat.S_IMODE(upstream.key_file.stat().st_mode) == 0o600
    assert upstream.key.startswith("sk-lm-")
    status, body = get_json(f"{upstream.base_url}/v1/models")
    assert (status, body["error"]["code"]) == (401, "missing_api_key")
    assert get_json(f"{upstream.base_url}/health") == (200, {"status": "ok"})  # no key needed
    status, body = get_json(f"{upstream.base_url}/v1/models", upstream.key)
    assert DEFAULT_MODEL_KEY in [m["id"] for m in body["data"]]
    chat = real_chat(upstream.base_url, upstream.key, DEFAULT_MODEL_KEY)  # loads it just in time
    assert chat.choices[0].message.content
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 8
    pid, home = upstream.pid, upstream.home
    assert pid is not None
    upstream.stop()
    assert not process_alive(pid)
    assert refuses_connections(int(upstream.base_url.rsplit(":", 1)[1]))
    assert not home.exists()
