"""The one generation pipeline and the one stream writer, across API families.

Refused options (``n``, ``logprobs``), prompts tokenized off the event loop, a client that
does not read cut after the write timeout (its generation cancelled), and streams that end with
the family's error event when anything fails after the headers went out (storing included).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lms.api import sse
from lms.api.state import CHATS
from lms.errors import StorageFullError
from lms.inference.generation import Generation, GenerationResult, post
from lms.inference.manager import ModelManager
from lms.inference.sampling import SamplingParams

MODEL = "google/gemma-3-270m"
DEADLINE = 300.0  # seconds: generous, for a busy 2-core machine


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail after :data:`DEADLINE`."""
    loop = asyncio.get_running_loop()
    until = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < until, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def sse_events(text: str) -> list[tuple[str | None, Any]]:
    found: list[tuple[str | None, Any]] = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = lines["data"]
        found.append((lines.get("event"), data if data == "[DONE]" else json.loads(data)))
    return found


# --- refused options (no model needed: refused before any load) --------------------------------

REFUSED = [
    ("/v1/chat/completions", {"n": 2}, "n"),
    ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs"),
    ("/v1/completions", {"n": 3}, "n"),
    ("/v1/completions", {"logprobs": 1}, "logprobs"),
    ("/v1/completions", {"best_of": 2}, "best_of"),
    ("/v1/responses", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/responses", {"include": ["message.output_text.logprobs"]}, "include"),
]


@pytest.mark.parametrize(("path", "extra", "param"), REFUSED)
async def test_unsupported_options_are_refused(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    extra: dict[str, Any],
    param: str,
) -> None:
    base: dict[str, Any] = {"model": MODEL}
    if path == "/v1/chat/completions":
        base["messages"] = [{"role": "user", "content": "hi"}]
    elif path == "/v1/completions":
        base["prompt"] = "hi"
    else:
        base["input"] = "hi"
    response = await client.post(path, json={**base, **extra})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "invalid_parameter"
    assert error["param"] == param
    assert "not supported" in error["message"] or "must be 1" in error["message"]


@pytest.mark.model
async def test_options_asking_for_nothing_are_accepted(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "n": 1,
            "logprobs": False,
            "top_logprobs": 0,
            "max_tokens": 2,
        },
    )
    assert response.status == 200
    assert len((await response.json())["choices"]) == 1


# --- prompts are rendered and tokenized off the event loop --------------------------------------


def watch_threads(
    monkeypatch: pytest.MonkeyPatch, target: Any, name: str
) -> list[threading.Thread]:
    """Record the thread of every call of ``target.name`` (which still runs)."""
    method = getattr(target, name)
    threads: list[threading.Thread] = []

    def watched(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return method(*args, **kwargs)

    monkeypatch.setattr(target, name, watched)
    return threads


@pytest.mark.model
async def test_prompts_are_tokenized_off_the_event_loop(
    client: TestClient,  # type: ignore[type-arg]
    manager: ModelManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = await manager.acquire(MODEL)
    threads = watch_threads(monkeypatch, instance.engine, "tokenize")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", chat),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1}),
        ("/v1/messages", {**chat, "max_tokens": 1}),
        ("/v1/messages/count_tokens", {"model": MODEL, "messages": chat["messages"]}),
        ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 1}),
        ("/api/v1/chat", {"model": MODEL, "input": "hi", "max_output_tokens": 1}),
    ]
    for path, body in requests:
        threads.clear()
        response = await client.post(path, json=body)
        assert response.status == 200, (path, await response.text())
        assert threads, path
        assert threading.main_thread() not in threads, path


@pytest.mark.model
async def test_grammars_are_compiled_off_the_event_loop(
    client: TestClient,  # type: ignore[type-arg]
    manager: ModelManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Compiling a grammar against the vocabulary parses all of it (up to 512 KiB): the pipeline
    # does it in its worker thread, and submit does not do it again on the loop.
    instance = await manager.acquire(MODEL)
    threads = watch_threads(monkeypatch, instance.engine, "check_grammar")
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    messages = [{"role": "user", "content": "hi"}]
    tool = {"name": "f", "description": "f", "input_schema": schema}
    json_schema = {"name": "x", "schema": schema}
    requests: list[tuple[str, dict[str, Any]]] = [
        (
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": messages,
                "max_tokens": 1,
                "response_format": {"type": "json_schema", "json_schema": json_schema},
            },
        ),
        (
            "/v1/messages",
            {
                "model": MODEL,
                "messages": messages,
                "max_tokens": 1,
                "tools": [tool],
                "tool_choice": {"type": "any"},
            },
        ),
        (
            "/v1/responses",
            {
                "model": MODEL,
                "input": "hi",
                "max_output_tokens": 1,
                "text": {"format": {"type": "json_schema", **json_schema}},
            },
        ),
    ]
    for path, body in requests:
        threads.clear()
        response = await client.post(path, json=body)
        assert response.status == 200, (path, await response.text())
        assert len(threads) == 1, path
        assert threads[0] is not threading.main_thread(), path


# --- a client that does not read is cut ----------------------------------------------------------


async def test_writer_cuts_a_client_that_does_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "WRITE_TIMEOUT", 0.2)
    ended = asyncio.Event()
    outcome: dict[str, Any] = {}

    async def endless(request: web.Request) -> web.StreamResponse:
        events = await sse.EventStream.open(request)

        async def error(err: Any) -> None:
            outcome["error"] = err

        try:
            async with events.guard(error):
                chunk = "x" * 65536
                while True:
                    await events.send({"text": chunk})
        finally:
            outcome["cut"] = events.is_cut
            ended.set()
        return events.response

    app = web.Application()
    app.router.add_post("/stream", endless)
    async with TestServer(app) as server:
        with _silent_client(server.host, server.port, "/stream", b"{}"):
            await asyncio.wait_for(ended.wait(), DEADLINE)
    assert outcome == {"cut": True}  # cut, and no error event for a client that is gone


@pytest.mark.model
async def test_a_stream_nobody_reads_is_cut_and_its_generation_cancelled(
    client: TestClient,  # type: ignore[type-arg]
    manager: ModelManager,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through the real route and pipeline. The text comes from a feeder as fast as the loop
    runs (the writer is the subject: a busy machine's real decoding would need minutes to
    fill the buffers); it stops when the generation is cancelled, as the engine does."""
    monkeypatch.setattr(sse, "WRITE_TIMEOUT", 0.2)
    instance = await manager.acquire(MODEL)
    feeders: list[asyncio.Task[GenerationResult]] = []

    def submit(
        tokens: list[int], params: SamplingParams, *, grammar_checked: bool = False
    ) -> Generation:
        generation = Generation(asyncio.get_running_loop(), tokens, params)

        async def feed() -> GenerationResult:
            produced = 0
            while not generation.is_cancelled and produced < 1_000_000:
                post([(generation, f" {produced},")])
                produced += 1
                await asyncio.sleep(0)  # one token per turn of the loop
            reason = "cancelled" if generation.is_cancelled else "length"
            result = GenerationResult(reason, len(tokens), produced, 0.0, 0.0)
            post([(generation, result)])
            return result

        feeders.append(asyncio.create_task(feed()))
        return generation

    monkeypatch.setattr(instance.engine, "submit", submit)
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count."}],
            "stream": True,
        }
    ).encode()
    server = client.server
    assert server.host is not None and server.port is not None
    with (
        caplog.at_level(logging.WARNING, "lms.api"),
        _silent_client(server.host, server.port, "/v1/chat/completions", body),
    ):
        await eventually(lambda: bool(feeders) and feeders[0].done(), "the generation to end")
        assert any("cut the stream of POST /v1/chat/completions" in m for m in caplog.messages)
    result = feeders[0].result()
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens < 1_000_000


class _silent_client:
    """A raw socket that sends one request and never reads (a small receive buffer)."""

    def __init__(self, host: str, port: int, path: str, body: bytes) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.address = (host, port)

    def __enter__(self) -> socket.socket:
        self.sock.connect(self.address)
        self.sock.sendall(self.request)
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# --- a failure after the headers went out is the family's error event ----------------------------


@pytest.fixture
def failing_store(
    client: TestClient,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Exception:
    error: Exception = request.param

    def save(**kwargs: Any) -> str:
        raise error

    monkeypatch.setattr(client.server.app[CHATS], "save", save)
    return error


FAILURES = [
    (StorageFullError("the disk is full"), "storage_full"),
    (OSError("boom"), "internal_error"),
]


def native_chat_ends(kinds: list[str | None], events: list[tuple[str | None, Any]]) -> str:
    assert kinds[-2:] == ["error", "chat.end"] and "message.end" in kinds
    return str(events[-2][1]["error"]["code"])


def responses_ends(kinds: list[str | None], events: list[tuple[str | None, Any]]) -> str:
    assert kinds[-1] == "error"
    assert "response.content_part.done" in kinds and "response.completed" not in kinds
    return str(events[-1][1]["code"])


@pytest.mark.model
@pytest.mark.parametrize(("failing_store", "code"), FAILURES, indirect=["failing_store"])
@pytest.mark.parametrize(
    ("path", "ending"), [("/api/v1/chat", native_chat_ends), ("/v1/responses", responses_ends)]
)
async def test_stream_ends_with_an_error_when_storing_fails(
    client: TestClient,  # type: ignore[type-arg]
    failing_store: Exception,
    code: str,
    path: str,
    ending: Callable[[list[str | None], list[tuple[str | None, Any]]], str],
) -> None:
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 2, "stream": True}
    response = await client.post(path, json=body)
    assert response.status == 200
    events = sse_events(await response.text())
    assert ending([kind for kind, _ in events], events) == code
    assert "boom" not in json.dumps(events)  # an unexpected error's text stays in the log
    plain = await client.post(path, json={**body, "stream": False})
    assert plain.status == (507 if code == "storage_full" else 500)
    assert (await plain.json())["error"]["code"] == code
