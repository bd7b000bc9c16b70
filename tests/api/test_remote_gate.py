"""Remote engines behind the gate (docs/REMOTES.md), plumbing against scripted upstreams.

The app runs in process; each upstream is a :class:`FakeUpstream` on a real loopback port. The
active health check runs once when a remote starts (``health_interval`` is an hour here, so no
background check changes a replica while a test looks at it); tests call ``engine.check()``
themselves where the check is the subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pki import make_pki
from remote.fake_upstream import LEAK_MARKERS, FakeUpstream, Fault

from lms.api.app import build_api_app
from lms.api.state import AUTH, REMOTES, Listener
from lms.auth import audit
from lms.auth.permissions import Permission
from lms.auth.registry import Registry
from lms.auth.usage import UsageStore
from lms.config import ConfigWatcher
from lms.inference.manager import ModelManager
from lms.remote import upstream
from lms.remote.engine import RemoteEngine

Gate = Callable[..., Awaitable[TestClient]]  # type: ignore[type-arg]
CHAT = {"model": "gpu/fake-model", "messages": [{"role": "user", "content": "hello there"}]}


def _toml_value(value: Any) -> str:
    return json.dumps(value)


def write_config(home: Path, remotes: dict[str, dict[str, Any]], auth: bool = False) -> None:
    lines = [f"[auth]\nrequired = {'true' if auth else 'false'}\n"]
    for name, table in remotes.items():
        lines.append(f"[remotes.{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def remote_table(*upstreams: FakeUpstream | str, **fields: Any) -> dict[str, Any]:
    urls = [u if isinstance(u, str) else u.base_url for u in upstreams]
    table: dict[str, Any] = {"urls": urls, "health_interval": 3600, **fields}
    keyed = [u for u in upstreams if isinstance(u, FakeUpstream) and u.key_file is not None]
    if keyed and "key_file" not in fields:
        table["key_file"] = str(keyed[0].key_file)
    return table


@pytest.fixture
async def make_fake_upstream() -> AsyncIterator[Callable[..., Awaitable[FakeUpstream]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(**settings: Any) -> FakeUpstream:
            return await stack.enter_async_context(FakeUpstream(**settings))

        yield make


@pytest.fixture
async def gate(manager: ModelManager, lms_home: Path) -> AsyncIterator[Gate]:
    clients: list[TestClient] = []  # type: ignore[type-arg]

    async def start(remotes: dict[str, dict[str, Any]], auth: bool = False) -> TestClient:  # type: ignore[type-arg]
        write_config(lms_home, remotes, auth)
        app = build_api_app(manager, ConfigWatcher({}), Listener("127.0.0.1", 0))
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        for engine in app[REMOTES].engines.values():
            await asyncio.wait_for(engine.polled.wait(), 60)
        return client

    yield start
    for client in clients:
        await client.close()


def engine_of(client: TestClient, name: str = "gpu") -> RemoteEngine:  # type: ignore[type-arg]
    return client.app[REMOTES].engines[name]


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


# --- models -------------------------------------------------------------------------------------


async def test_remote_models_are_listed_under_the_remote_name(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream(models=["fake-model", "Other/Model-7B"])
    client = await gate({"gpu": remote_table(fake)})
    listed = await (await client.get("/v1/models")).json()
    remote = {m["id"]: m for m in listed["data"] if m.get("remote")}
    assert set(remote) == {"gpu/fake-model", "gpu/Other/Model-7B"}
    assert remote["gpu/fake-model"]["remote"] == "gpu"
    native = await (await client.get("/api/v1/models")).json()
    keys = {m["key"]: m for m in native["models"]}
    assert keys["gpu/Other/Model-7B"]["format"] == "remote"
    assert keys["gpu/Other/Model-7B"]["display_name"] == "Other/Model-7B"


async def test_globs_choose_the_models_and_renames_follow_the_upstream(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream(models=["qwen-7b", "llama-8b"], strict_models=False)
    client = await gate({"gpu": remote_table(fake, models=["QWEN*"])})
    engine = engine_of(client)
    assert [m.key for m in client.app[REMOTES].models()] == ["gpu/qwen-7b"]
    fake.models = ["qwen-14b"]
    await engine.check()
    assert [m.key for m in client.app[REMOTES].models()] == ["gpu/qwen-14b"]
    gone = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpu/qwen-7b"})
    assert gone.status == 404
    body = await gone.json()
    assert body["error"]["code"] == "model_not_found"
    assert "gpu/qwen-14b" in body["error"]["message"]


async def test_a_remote_named_like_a_publisher_folder_is_hidden(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"google": remote_table(fake)})  # the default model's publisher
    remotes = client.app[REMOTES]
    assert remotes.models() == []
    (status,) = remotes.status()
    assert "publisher folder" in status["error"]
    local = await client.get("/v1/models")
    assert "google/gemma-3-270m" in {m["id"] for m in (await local.json())["data"]}


# --- pass-through -------------------------------------------------------------------------------


async def test_chat_passes_through_with_the_gates_key_never_the_clients(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]], lms_home: Path
) -> None:
    fake = await make_fake_upstream(key="sk-upstream-secret-0123456789")
    client = await gate({"gpu": remote_table(fake)}, auth=True)
    _, token = Registry().create("caller")
    response = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "ttl": 60, "logprobs": True},
        headers={"Authorization": f"Bearer {token}", "x-api-key": token, "Cookie": "a=b"},
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["model"] == "gpu/fake-model"
    assert body["choices"][0]["message"]["content"] == "echo: hello there"
    (seen,) = [r for r in fake.received if r.path == "/v1/chat/completions"]
    assert seen.headers["Authorization"] == "Bearer sk-upstream-secret-0123456789"
    assert "x-api-key" not in seen.headers and "Cookie" not in seen.headers
    assert token not in json.dumps(dict(seen.headers))
    assert seen.json["model"] == "fake-model"
    assert "ttl" not in seen.json and seen.json["logprobs"] is True  # upstream features pass


async def test_a_stream_asks_for_usage_counts_it_and_shows_it_only_when_asked(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]], lms_home: Path
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)}, auth=True)
    record, token = Registry().create("counted")
    headers = {"Authorization": f"Bearer {token}"}
    plain = await client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers
    )
    events = sse_data(await plain.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        == "echo: hello there"
    )
    assert all(c["model"] == "gpu/fake-model" for c in chunks)
    assert fake.received[-1].json["stream_options"] == {"include_usage": True}
    asked = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        headers=headers,
    )
    usage = [json.loads(e)["usage"] for e in sse_data(await asked.text())[:-1] if '"usage"' in e]
    assert usage and usage[-1]["completion_tokens"] > 0
    client.app[AUTH].usage.flush()
    counted = UsageStore().read([record.id])[record.id]
    assert counted.prompt_tokens > 0 and counted.completion_tokens > 0
    assert counted.unknown_count == 0


async def test_a_finished_stream_leaves_its_connection_for_the_next_request(
    gate: Gate,
    make_fake_upstream: Callable[..., Awaitable[FakeUpstream]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After [DONE] the gate reads the end of the body, so the connection goes back to the pool
    # (an upstream that keeps connections alive, as uvicorn and aiohttp do, is not reconnected
    # to per request). The end of the body comes a moment after [DONE] (else aiohttp sees both
    # at once and this would pass without the drain); the drain's time bound is lifted so a
    # slow machine cannot decide this.
    monkeypatch.setattr(upstream, "DRAIN_SECONDS", 600.0)
    fake = await make_fake_upstream(linger=0.1)
    client = await gate({"gpu": remote_table(fake)})
    for _ in range(3):
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert response.status == 200
        assert sse_data(await response.text())[-1] == "[DONE]"
        # The drain runs beside the answer: the next request waits for it here, else it could
        # start before the connection is back in the pool (and rightly open another).
        await asyncio.gather(*upstream._DRAINS)
    peers = {r.peer for r in fake.received if r.path == "/v1/chat/completions"}
    assert len(peers) == 1, peers


async def test_an_upstream_slow_to_end_its_body_does_not_hold_back_the_answer(
    gate: Gate,
    make_fake_upstream: Callable[..., Awaitable[FakeUpstream]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The upstream sends [DONE] and then never ends its body (until it closes); the drain
    # waits for it as long as it may. Each client's answer still ends, and its next request on
    # the same kept-alive connection is served: the drain runs beside them, on the pass-through
    # path and on a translated one. The time limits guard against a hang; they measure nothing.
    monkeypatch.setattr(upstream, "DRAIN_SECONDS", 600.0)
    fake = await make_fake_upstream(linger=math.inf)
    client = await gate({"gpu": remote_table(fake)})
    passed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert passed.status == 200
    assert sse_data(await asyncio.wait_for(passed.text(), 120))[-1] == "[DONE]"
    translated = await client.post("/v1/messages", json={**CHAT, "max_tokens": 32, "stream": True})
    assert translated.status == 200
    text = await asyncio.wait_for(translated.text(), 120)
    assert "event: message_stop" in text and "echo" in text


async def test_usage_an_upstream_does_not_report_is_counted_as_unknown(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]], lms_home: Path
) -> None:
    fake = await make_fake_upstream(usage="never")
    client = await gate({"gpu": remote_table(fake)}, auth=True)
    record, token = Registry().create("unknown-usage")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
    messages = {"model": "gpu/fake-model", "max_tokens": 16, "messages": CHAT["messages"]}
    assert (await client.post("/v1/messages", json=messages, headers=headers)).status == 200
    client.app[AUTH].usage.flush()
    counted = UsageStore().read([record.id])[record.id]
    assert counted.unknown_count == 2
    assert counted.prompt_tokens == 0 and counted.completion_tokens == 0


async def test_completions_and_embeddings_pass_through(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)})
    text = await client.post(
        "/v1/completions", json={"model": "gpu/fake-model", "prompt": "once", "stream": True}
    )
    assert sse_data(await text.text())[-1] == "[DONE]"
    vectors = await client.post(
        "/v1/embeddings", json={"model": "gpu/fake-model", "input": ["a", "b"]}
    )
    body = await vectors.json()
    assert vectors.status == 200 and len(body["data"]) == 2 and body["model"] == "gpu/fake-model"


# --- translated families ------------------------------------------------------------------------


async def test_messages_responses_and_native_chat_are_translated(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)})
    messages = await client.post(
        "/v1/messages",
        json={"model": "gpu/fake-model", "max_tokens": 20, "messages": CHAT["messages"]},
    )
    assert (await messages.json())["content"][0]["text"] == "echo: hello there"
    responses = await client.post(
        "/v1/responses", json={"model": "gpu/fake-model", "input": "hi", "stream": True}
    )
    assert "response.completed" in await responses.text()
    first = await client.post("/api/v1/chat", json={"model": "gpu/fake-model", "input": "one"})
    body = await first.json()
    assert body["output"][0]["content"] == "echo: one" and body["stats"]["input_tokens"] > 0
    follow = await client.post(
        "/api/v1/chat",
        json={
            "model": "gpu/fake-model",
            "input": "two",
            "previous_response_id": body["response_id"],
        },
    )
    assert (await follow.json())["output"][0]["content"] == "echo: two"
    sent = fake.received[-1].json["messages"]
    assert [m["content"] for m in sent] == ["one", "echo: one", "two"]  # the stored chat


async def test_what_cannot_be_done_remotely_is_a_clear_400(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)})
    count = await client.post(
        "/v1/messages/count_tokens",
        json={"model": "gpu/fake-model", "messages": CHAT["messages"]},
    )
    assert count.status == 400
    assert (await count.json())["error"]["type"] == "invalid_request_error"
    forced = await client.post(
        "/v1/responses",
        json={
            "model": "gpu/fake-model",
            "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        },
    )
    assert forced.status == 400
    assert (await forced.json())["error"]["code"] == "remote_unsupported"
    context = await client.post(
        "/api/v1/chat", json={"model": "gpu/fake-model", "input": "x", "context_length": 2048}
    )
    assert context.status == 400 and (await context.json())["error"]["param"] == "context_length"


# --- the gate's rules ---------------------------------------------------------------------------


async def test_allowlists_apply_to_remote_keys_and_hidden_ones_are_audited(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream(models=["fake-model", "secret-model"])
    client = await gate({"gpu": remote_table(fake)}, auth=True)
    _, token = Registry().create("narrow", models=["gpu/fake-*"])
    headers = {"Authorization": f"Bearer {token}"}
    listed = await (await client.get("/v1/models", headers=headers)).json()
    assert [m["id"] for m in listed["data"] if m.get("remote")] == ["gpu/fake-model"]
    hidden = await client.post(
        "/v1/chat/completions", json={**CHAT, "model": "gpu/secret-model"}, headers=headers
    )
    assert hidden.status == 404
    assert "secret-model" not in (await hidden.json())["error"]["message"].split("Available")[1]
    assert not [r for r in fake.received if r.path == "/v1/chat/completions"]
    refused = [e for e in audit.read() if e.get("event") == "request_refused"]
    assert any(e["reason"] == "model_not_allowed" for e in refused)
    _, inference_less = Registry().create("listing-only", permissions={Permission.MODELS})
    denied = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {inference_less}"}
    )
    assert denied.status == 403
    assert not [r for r in fake.received if r.path == "/v1/chat/completions"]


# --- failures -----------------------------------------------------------------------------------


async def test_upstream_errors_are_sanitised_in_each_familys_envelope(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream(key="sk-upstream-secret-0123456789")
    client = await gate({"gpu": remote_table(fake)})
    fake.fail(Fault.ERROR, status=500, body_format="text")
    openai = await client.post("/v1/chat/completions", json=CHAT)
    anthropic = await client.post(
        "/v1/messages",
        json={"model": "gpu/fake-model", "max_tokens": 8, "messages": CHAT["messages"]},
    )
    assert openai.status == 502 and anthropic.status == 502
    assert (await anthropic.json())["type"] == "error"
    for text in (await openai.text(), await anthropic.text()):
        for marker in (*LEAK_MARKERS, "sk-upstream-secret", fake.base_url, str(fake.port)):
            assert marker not in text
    fake.fail(Fault.ERROR, status=400)
    rejected = await client.post("/v1/chat/completions", json=CHAT)
    assert rejected.status == 400
    assert (await rejected.json())["error"]["code"] == "remote_rejected"


async def test_a_wrong_upstream_key_is_the_gates_problem_not_the_clients(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]], tmp_path: Path
) -> None:
    fake = await make_fake_upstream(key="right-key")
    wrong = tmp_path / "wrong.key"
    wrong.write_text("wrong-key\n")
    wrong.chmod(0o600)
    client = await gate({"gpu": remote_table(fake, key_file=str(wrong))})
    assert client.app[REMOTES].models() == []
    engine = engine_of(client)
    wrong.write_text("right-key\n")  # the key file is re-read when it changes
    await engine.check()
    answer = await client.post("/v1/chat/completions", json=CHAT)
    assert answer.status == 200


async def test_a_key_file_others_can_read_is_refused(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]], tmp_path: Path
) -> None:
    fake = await make_fake_upstream(key="right-key", strict_models=False)
    loose = tmp_path / "loose.key"
    loose.write_text("right-key\n")
    loose.chmod(0o644)
    client = await gate({"gpu": remote_table(fake, key_file=str(loose))})
    (status,) = client.app[REMOTES].status()
    assert "can be read by others" in status["error"]
    assert not fake.received  # nothing was sent with a key that may have leaked


async def test_a_failed_replica_is_skipped_before_anything_is_streamed(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    bad = await make_fake_upstream()
    good = await make_fake_upstream()
    client = await gate({"gpu": remote_table(bad, good)})
    bad.fail(Fault.ERROR, status=503)
    for _ in range(4):
        for stream in (False, True):
            answer = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            assert answer.status == 200
            assert "echo" in await answer.text()
    engine = engine_of(client)
    first, _ = engine.pool.replicas
    assert not first.healthy and first.error == "answered HTTP 503"
    bad.heal()
    await engine.check()  # the active check brings it back
    assert first.healthy


async def test_a_connection_dropped_before_any_answer_is_tried_once_more_on_a_new_one(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    # An upstream closes a kept-alive connection when its keep-alive time ends; a request sent
    # at that moment meets a closed connection before any answer. That is retried once on a
    # new connection and says nothing about the replica (one replica here: without the retry
    # the client would get 503 and the replica would be taken out).
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)})
    for stream in (False, True):
        fake.fail(Fault.DROP, times=1)
        answer = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert answer.status == 200, await answer.text()
        assert "echo" in await answer.text()
    assert fake.paths_seen().count("/v1/chat/completions") == 4  # two dropped, two answered
    (replica,) = engine_of(client).pool.replicas
    assert replica.healthy and replica.error is None and replica.failures == 0
    # Dropped twice in a row is the replica's failure, not a stale connection.
    fake.fail(Fault.DROP, times=2)
    answer = await client.post("/v1/chat/completions", json=CHAT)
    assert answer.status == 503
    assert (await answer.json())["error"]["code"] == "remote_unavailable"
    assert not replica.healthy


async def test_a_replica_that_refuses_connections_is_taken_out_at_once(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    good = await make_fake_upstream()
    client = await gate({"gpu": remote_table(closed_port(), good)})
    engine = engine_of(client)
    dead, _ = engine.pool.replicas
    assert not dead.healthy  # the first active check saw it
    dead.healthy = True  # as if it had been up: the passive check must notice alone
    for _ in range(2):  # ties go to each replica in turn: one of these picks the dead one
        answer = await client.post("/v1/chat/completions", json=CHAT)
        assert answer.status == 200
    assert dead.picked == 1
    assert not dead.healthy and dead.error is not None and "cannot connect" in dead.error
    assert "127.0.0.1" not in dead.error


async def test_no_replica_left_is_a_503_with_retry_after(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)})
    fake.fail(Fault.ERROR, status=502)
    answer = await client.post("/v1/chat/completions", json=CHAT)
    assert answer.status == 502  # the upstream's own failure, sanitised
    await fake.close()
    gone = await client.post("/v1/chat/completions", json=CHAT)
    assert gone.status == 503 and "Retry-After" in gone.headers
    assert (await gone.json())["error"]["code"] == "remote_unavailable"


async def test_a_stream_cut_upstream_ends_with_an_error_event(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)})
    fake.fail(Fault.CUT_MID_STREAM, after_chunks=2)
    answer = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = sse_data(await answer.text())
    errors = [json.loads(e) for e in events if e != "[DONE]" and '"error"' in e]
    assert answer.status == 200 and errors, events
    assert "broke off" in errors[0]["error"]["message"] or "ended" in errors[0]["error"]["message"]
    native = await client.post(
        "/api/v1/chat", json={"model": "gpu/fake-model", "input": "x", "stream": True}
    )
    assert "event: error" in await native.text()


async def test_an_upstream_that_hangs_times_out(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake, idle_timeout=1)})
    fake.fail(Fault.HANG_BEFORE_HEADERS)
    answer = await client.post("/v1/chat/completions", json=CHAT)
    assert answer.status == 504
    assert (await answer.json())["error"]["code"] == "remote_timeout"
    fake.fail(Fault.HANG_MID_STREAM)
    stream = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert '"remote_timeout"' in await stream.text()


async def test_oversized_answers_and_lines_are_refused(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)})
    fake.fail(Fault.HUGE_LINE, size=2 << 20)
    stream = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert "longer than" in await stream.text()
    fake.fail(Fault.HUGE_BODY, size=40 << 20)
    whole = await client.post("/v1/chat/completions", json=CHAT)
    assert whole.status == 502 and "larger than" in (await whole.json())["error"]["message"]


async def test_redirects_are_never_followed(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)})
    fake.fail(Fault.REDIRECT)
    answer = await client.post("/v1/chat/completions", json=CHAT)
    assert answer.status == 502
    assert not [p for p in fake.paths_seen() if p.startswith("/redirected")]


async def test_a_full_replica_answers_503_instead_of_queueing_without_bound(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake, max_concurrent=1)})
    fake.fail(Fault.HANG_BEFORE_HEADERS)
    hanging = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    while fake.in_flight < 1:
        await asyncio.sleep(0.01)
    busy = await client.post("/v1/chat/completions", json=CHAT)
    assert busy.status == 503 and (await busy.json())["error"]["code"] == "server_busy"
    hanging.cancel()


async def test_removing_a_remote_takes_its_models_away_without_a_restart(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]], lms_home: Path
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)})
    remotes = client.app[REMOTES]
    assert remotes.models()
    write_config(lms_home, {})
    await remotes.reconcile()
    assert remotes.models() == [] and not remotes.engines
    write_config(lms_home, {"cpu": remote_table(fake)})
    await remotes.reconcile()
    await asyncio.wait_for(remotes.engines["cpu"].polled.wait(), 60)
    assert [m.key for m in remotes.models()] == ["cpu/fake-model"]


async def test_loading_and_unloading_a_remote_model_is_refused_clearly(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    fake = await make_fake_upstream()
    client = await gate({"gpu": remote_table(fake)})
    load = await client.post("/api/v1/models/load", json={"model": "gpu/fake-model"})
    unload = await client.post("/api/v1/models/unload", json={"instance_id": "gpu/fake-model"})
    for answer, param in ((load, "model"), (unload, "instance_id")):
        assert answer.status == 400
        error = (await answer.json())["error"]
        assert (error["code"], error["param"]) == ("remote_unsupported", param)
    missing = await client.post("/api/v1/models/load", json={"model": "gpu/nothing"})
    assert missing.status == 404


async def test_https_upstreams_are_verified_against_the_named_ca(
    gate: Gate, make_fake_upstream: Callable[..., Awaitable[FakeUpstream]], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    fake = await make_fake_upstream(ssl_context=context)
    assert fake.base_url.startswith("https://")
    client = await gate(
        {"trusted": remote_table(fake, ca_file=str(pki.ca)), "untrusted": remote_table(fake)}
    )
    answer = await client.post("/v1/chat/completions", json={**CHAT, "model": "trusted/fake-model"})
    assert answer.status == 200
    untrusted = engine_of(client, "untrusted")
    assert untrusted.models == {}  # the system's CAs do not know the test CA
    (replica,) = untrusted.pool.replicas
    assert not replica.healthy and "TLS" in (replica.error or "")
