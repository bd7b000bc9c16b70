"""The gate in front of real upstreams (docs/REMOTES.md), spoken to by the official clients.

The upstreams are real servers in their own processes on their own ports: llama-cpp-python's
OpenAI-compatible server and another lms daemon, both on the default model. The gate is lms's
API application in this process, on a real loopback port, with tokens from the registry; the
clients are the official ``openai`` and ``anthropic`` libraries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from aiohttp.test_utils import TestServer
from fakes import FakeLoader

from lms.api.app import build_api_app
from lms.api.state import REMOTES, Listener
from lms.auth.registry import Registry
from lms.config import ConfigWatcher
from lms.inference.manager import ModelManager
from lms.remote.registry import Remotes

from .gateconfig import remotes_toml
from .upstreams import DEFAULT_MODEL_KEY, LlamaCppServer, LmsUpstream

pytestmark = pytest.mark.model

Gate = Callable[..., Awaitable[tuple[str, str, Remotes]]]
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def lms_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
async def gate(lms_home: Path, tmp_path: Path) -> AsyncIterator[Gate]:
    """Start a gate (auth on) whose config.toml holds ``toml``: (base URL, a token, remotes)."""
    servers: list[TestServer] = []
    managers: list[ModelManager] = []

    async def start(toml: str) -> tuple[str, str, Remotes]:
        config = lms_home / "config" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text("[auth]\nrequired = true\n\n" + toml)
        empty = tmp_path / "no-local-models"
        empty.mkdir(exist_ok=True)
        watcher = ConfigWatcher({})
        manager = ModelManager(watcher.current, models_dir=lambda: empty, loader=FakeLoader())
        managers.append(manager)
        app = build_api_app(manager, watcher, Listener("127.0.0.1", 0))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        for engine in app[REMOTES].engines.values():
            await asyncio.wait_for(engine.polled.wait(), 120)
        _, token = Registry().create(f"client-{len(servers)}")
        return f"http://127.0.0.1:{server.port}", token, app[REMOTES]

    yield start
    for server in servers:
        await server.close()
    for manager in managers:
        await manager.close()


def table(*upstreams: Any, **fields: Any) -> str:
    text = remotes_toml({"up": list(upstreams)})
    return text + "".join(f"{key} = {value}\n" for key, value in fields.items())


async def test_openai_and_anthropic_clients_reach_llama_cpp_server_through_the_gate(
    gate: Gate, make_llama_cpp_server: Callable[..., LlamaCppServer]
) -> None:
    upstream = make_llama_cpp_server(api_key="sk-upstream-only", alias="gemma")
    url, token, _ = await gate(table(upstream))
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token) as client:
        listed = [m.id async for m in client.models.list()]
        assert "up/gemma" in listed
        chat = await client.chat.completions.create(
            model="up/gemma",
            messages=HELLO,
            max_tokens=8,
            temperature=0,  # type: ignore[arg-type]
        )
        assert chat.model == "up/gemma" and chat.choices[0].message.content
        assert chat.usage is not None and chat.usage.completion_tokens > 0
        stream = await client.chat.completions.create(
            model="up/gemma",
            messages=HELLO,
            max_tokens=8,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces) == chat.choices[0].message.content  # greedy: the same words
    async with anthropic.AsyncAnthropic(base_url=url, api_key=token) as claude:
        message = await claude.messages.create(
            model="up/gemma",
            max_tokens=8,
            messages=HELLO,  # type: ignore[arg-type]
        )
        assert message.content[0].type == "text" and message.content[0].text
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-lm-wrong:nope") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(
                model="up/gemma",
                messages=HELLO,
                max_tokens=2,  # type: ignore[arg-type]
            )


async def test_another_lms_daemon_as_upstream_with_stored_chats_at_the_gate(
    gate: Gate, make_lms_upstream: Callable[..., LmsUpstream]
) -> None:
    upstream = make_lms_upstream()
    url, token, _ = await gate(table(upstream, health_path='"/health"'))
    key = f"up/{DEFAULT_MODEL_KEY}"
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token) as client:
        stream = await client.chat.completions.create(
            model=key,
            messages=HELLO,  # type: ignore[arg-type]
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert any(c.choices and c.choices[0].delta.content for c in chunks)
        usage = [c.usage for c in chunks if c.usage is not None]
        assert usage and usage[-1].completion_tokens > 0
        first = await client.post(
            "/../api/v1/chat",
            cast_to=dict,
            body={"model": key, "input": "Name a colour.", "max_output_tokens": 8},
        )
        follow = await client.post(
            "/../api/v1/chat",
            cast_to=dict,
            body={
                "model": key,
                "input": "Another.",
                "max_output_tokens": 8,
                "previous_response_id": first["response_id"],
            },
        )
        assert follow["model_instance_id"] == key and follow["output"]


async def test_a_replica_killed_under_load_fails_no_request_that_had_not_started(
    gate: Gate, make_llama_cpp_server: Callable[..., LlamaCppServer]
) -> None:
    doomed = make_llama_cpp_server(alias="gemma", interrupt_requests=False)
    spare = make_llama_cpp_server(alias="gemma", interrupt_requests=False)
    url, token, remotes = await gate(table(doomed, spare, health_interval=1))
    first = remotes.engines["up"].pool.replicas[0]
    assert first.url == doomed.base_url

    async def ask(client: openai.AsyncOpenAI) -> str:
        """'ok' (a whole answer), or 'cut' (an error after streaming began)."""
        stream = await client.chat.completions.create(
            model="up/gemma",
            messages=HELLO,
            max_tokens=24,
            stream=True,  # type: ignore[arg-type]
        )
        finished = False
        try:
            async for chunk in stream:
                finished = finished or bool(chunk.choices and chunk.choices[0].finish_reason)
        except openai.APIError:
            return "cut"
        assert finished, "a stream ended without a finish reason or an error: a silent stop"
        return "ok"

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0) as client:
        running = [asyncio.create_task(ask(client)) for _ in range(4)]
        while first.in_flight == 0:  # least-outstanding routing gives it two of the four
            assert not any(t.done() for t in running)
            await asyncio.sleep(0.01)
        doomed.kill()
        outcomes = await asyncio.gather(*running)
        assert set(outcomes) <= {"ok", "cut"}
        after = await asyncio.gather(*(ask(client) for _ in range(4)))
        assert after == ["ok"] * 4  # new requests go to the replica left, or retry there
