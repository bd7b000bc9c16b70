"""The official `lmstudio` SDK on a remote engine's models (docs/API.md, SDK endpoints): a
real lms daemon (auth on) whose config.toml has ``[remotes.up]`` pointing at
:class:`FakeUpstream`, an OpenAI-compatible server in a thread of this process. The SDK lists the
remote models as downloaded and loaded, gets a handle with ``llm.model("up/m1")``, and its
``respond``/``complete`` return the upstream's answer; what only a local engine does is refused
with a message naming the model.

No real model is needed: the fake answers (plumbing of SDK ↔ gate ↔ upstream). Its answer
depends on the request, so text that did not come from it cannot pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmstudio
import pytest
from aiohttp import web

from lms.auth.permissions import Permission
from lms.auth.registry import Registry

# The daemon fills its models folder with the default model at start: it gets the session's
# (as every daemon of tests/clients), which this marker declares. Nothing here runs the model.
pytestmark = pytest.mark.model

CONTEXT = 8192  # what the fake says of m1's context
STARTUP_SECONDS = 240.0  # liveness bounds only: a busy 2-core machine starts slowly
POLL_SECONDS = 0.1


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def _call(request: web.Request, name: str) -> web.StreamResponse:
    """A streamed call of the tool ``name`` with ``{"a": 1, "b": 2}``, in two fragments."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for fragment in (
        {"index": 0, "id": "call_1", "function": {"name": name, "arguments": '{"a": 1'}},
        {"index": 0, "function": {"arguments": ', "b": 2}'}},
    ):
        choice = {"index": 0, "delta": {"tool_calls": [fragment]}, "finish_reason": None}
        await response.write(_event({"id": "x", "choices": [choice]}))
    end = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    await response.write(_event({"id": "x", "choices": [end]}))
    await response.write(b"data: [DONE]\n\n")
    return response


async def _stream(request: web.Request, text: str, shape: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    for piece in pieces:
        choice: dict[str, Any] = {"index": 0, "finish_reason": None}
        choice.update({"delta": {"content": piece}} if shape == "chat" else {"text": piece})
        await response.write(_event({"id": "x", "choices": [choice]}))
    end: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
    end.update({"delta": {}} if shape == "chat" else {"text": ""})
    await response.write(_event({"id": "x", "choices": [end]}))
    usage = {"prompt_tokens": 5, "completion_tokens": len(pieces)}
    await response.write(_event({"id": "x", "choices": [], "usage": usage}))
    await response.write(b"data: [DONE]\n\n")
    return response


class FakeUpstream:
    """An OpenAI-compatible server listing ``m1`` and ``m2``, in a thread with its own event
    loop: a chat is answered ``"you said: <last user message>"``, a completion ``"<prompt> and
    so on"``, streamed with usage at the end. With tools offered, it calls the first one with
    ``{"a": 1, "b": 2}``, and once a tool result is the last message says ``"the tool said
    <result>"``. ``received`` keeps (path, body) of each request."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)

    def _app(self) -> web.Application:
        async def models(request: web.Request) -> web.Response:
            data = [
                {"id": "m1", "object": "model", "context_length": CONTEXT},
                {"id": "m2", "object": "model"},
            ]
            return web.json_response({"object": "list", "data": data})

        async def chat(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            self.received.append((request.path, body))
            last = body["messages"][-1]
            if last["role"] == "tool":
                return await _stream(request, f"the tool said {last['content']}", "chat")
            if body.get("tools"):
                return await _call(request, body["tools"][0]["function"]["name"])
            user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
            return await _stream(request, f"you said: {user}", "chat")

        async def completion(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            self.received.append((request.path, body))
            return await _stream(request, f"{body['prompt']} and so on", "text")

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_post("/v1/completions", completion)
        return app

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        assert self._runner is not None
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(STARTUP_SECONDS), "the fake upstream did not start"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STARTUP_SECONDS)
        assert not self._thread.is_alive()


@dataclass
class Gate:
    host: str
    url: str
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def gate(upstream: FakeUpstream, default_models_dir: Path) -> Iterator[Gate]:
    """A real daemon, auth on, with ``[remotes.up]`` on the fake; its models folder is the
    session's (the default model is listed, never loaded here)."""
    home = Path(tempfile.mkdtemp(prefix="lmsr"))
    (home / "data").mkdir(mode=0o700)
    (home / "data" / "models").symlink_to(default_models_dir, target_is_directory=True)
    (home / "config").mkdir(mode=0o700)
    (home / "config" / "config.toml").write_text(
        f'[auth]\nrequired = true\n\n[remotes.up]\nurls = ["http://127.0.0.1:{upstream.port}"]\n'
    )
    registry = Registry(home / "config" / "tokens.toml")
    tokens = {
        "all": registry.create("sdk-all", permissions={Permission.INFERENCE, Permission.MODELS}),
        "m1": registry.create("sdk-m1", models=["up/m1"]),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMS_", "LMSTUDIO_"))}
    env["LMS_HOME"] = str(home)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lms.daemon", "--serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once the server listens
        assert "serving on " in banner, banner
        url = banner.split("serving on ")[1].split()[0]
        secret = tokens["all"][1]
        deadline = time.monotonic() + STARTUP_SECONDS  # until the remote's first poll
        while "up/m1" not in [m["id"] for m in _get(f"{url}/v1/models", secret)["data"]]:
            assert time.monotonic() < deadline, "the remote's models never appeared"
            time.sleep(POLL_SECONDS)
        host = "localhost:" + url.rsplit(":", 1)[1]
        yield Gate(host, url, {name: token for name, (_, token) in tokens.items()})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def sdk(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> Iterator[lmstudio.Client]:
    monkeypatch.delenv("LMSTUDIO_API_TOKEN", raising=False)
    with lmstudio.Client(api_host=gate.host, api_token=gate.tokens["all"]) as client:
        yield client


def test_remote_models_are_listed_downloaded_and_loaded(sdk: lmstudio.Client) -> None:
    # The local (default) model comes first, then the remote ones.
    downloaded = {m.model_key: m for m in sdk.list_downloaded_models()}
    assert [key for key in downloaded if key.startswith("up/")] == ["up/m1", "up/m2"]
    assert downloaded["up/m1"].type == "llm"
    assert [m.model_key for m in sdk.llm.list_downloaded()][-2:] == ["up/m1", "up/m2"]
    assert "up/m1" not in [m.model_key for m in sdk.embedding.list_downloaded()]
    assert [m.identifier for m in sdk.llm.list_loaded()] == ["up/m1", "up/m2"]
    assert sdk.embedding.list_loaded() == []
    assert sdk.llm.model().identifier == "up/m1"  # no key: the first loaded model


def test_respond_and_complete_return_the_upstreams_answer(
    sdk: lmstudio.Client, upstream: FakeUpstream
) -> None:
    model = sdk.llm.model("up/m1")
    assert model.identifier == "up/m1"
    info = model.get_info()
    assert info.model_key == "up/m1" and info.display_name == "m1 (remote up)"
    assert model.get_context_length() == CONTEXT
    result = model.respond("hello there", config={"maxTokens": 30, "temperature": 0.2})
    assert result.content == "you said: hello there"
    assert result.stats.stop_reason == "eosFound"
    assert result.stats.predicted_tokens_count == 7  # the upstream's usage
    assert result.model_info.model_key == "up/m1"
    path, body = upstream.received[-1]
    assert path == "/v1/chat/completions" and body["model"] == "m1"
    assert (body["max_tokens"], body["temperature"]) == (30, 0.2)
    stream = model.respond_stream("in pieces")
    pieces = [fragment.content for fragment in stream]
    assert "".join(pieces) == stream.result().content == "you said: in pieces"
    completion = model.complete("Once upon a time", config={"maxTokens": 30})
    assert completion.content == "Once upon a time and so on"
    path, body = upstream.received[-1]
    assert path == "/v1/completions" and body["prompt"] == "Once upon a time"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_act_runs_the_upstreams_tool_calls(sdk: lmstudio.Client, upstream: FakeUpstream) -> None:
    model = sdk.llm.model("up/m1")
    messages: list[Any] = []
    model.act("What is 1 + 2?", [add], on_message=messages.append)
    said = [str(message.content) for message in messages]
    assert len(said) == 3  # the call, its result, the answer
    assert "the tool said 3" in said[-1]
    path, body = upstream.received[-1]  # the call and its result went back upstream
    assert path == "/v1/chat/completions"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool"]
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == "add"
    assert body["messages"][2]["content"] == "3"


def test_what_only_a_local_engine_does_is_refused_by_name(
    sdk: lmstudio.Client, upstream: FakeUpstream
) -> None:
    model = sdk.llm.model("up/m2")
    seen = len(upstream.received)
    for attempt in (
        lambda: model.tokenize("hi"),
        lambda: model.count_tokens("hi"),
        lambda: model.unload(),
        lambda: sdk.llm.load_new_instance("up/m2"),
        lambda: model.respond("hi", response_format={"type": "object", "properties": {}}),
        lambda: sdk.embedding.model("up/m2"),
    ):
        with pytest.raises(lmstudio.LMStudioServerError) as caught:
            attempt()
        assert "remote model 'up/m2'" in str(caught.value)
    assert len(upstream.received) == seen  # nothing reached the upstream


def test_the_allowlist_hides_other_remote_models(gate: Gate) -> None:
    with lmstudio.Client(api_host=gate.host, api_token=gate.tokens["m1"]) as client:
        assert [m.model_key for m in client.list_downloaded_models()] == ["up/m1"]
        assert [m.identifier for m in client.llm.list_loaded()] == ["up/m1"]
        with pytest.raises(lmstudio.LMStudioModelNotFoundError):
            client.llm.model("up/m2")
        assert client.llm.model("up/m1").respond("mine").content == "you said: mine"
