"""Worker threads that cannot die, work that stops when its client leaves, bounded queues.

The engine's on the real default model (``model``): failures are injected into one job (a
monkeypatched step raising what a tokenizer, a sampler or a grammar could raise) and the next
request on the same instance must be served. The embedder's on a FakeEmbedder (tests/fakes.py):
its worker loop, groups, queue bound and close are the real embedder's, only the vectors are
fake. Queue bounds are asserted without timing: the requests that fill a queue are submitted
with no await in between (none can finish meanwhile), or are held inside a group by a
test-controlled event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEmbedder, GroupGate

from lms.errors import (
    InternalError,
    InvalidParameterError,
    ServerBusyError,
    ShuttingDownError,
)
from lms.inference.embedder import Embedder
from lms.inference.engine import Engine, Generation, LoadOptions
from lms.inference.sampling import SamplingParams
from lms.inference.worker import RETRY_AFTER_SECONDS

DEADLINE = 120.0  # seconds: generous, only ever reached when something is broken


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n)


async def poll(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


async def outcome(generation: Generation) -> str:
    """How a generation ended: its finish reason, or the error class name."""
    try:
        await generation.text()
    except Exception as exc:
        return type(exc).__name__
    assert generation.result is not None
    return generation.result.finish_reason


# --- engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(default_model_path: Path) -> Iterator[Engine]:
    loaded = Engine.load(
        default_model_path, LoadOptions(context_length=512, parallel=2, queue_length=2)
    )
    yield loaded
    loaded.close()


async def served(engine: Engine) -> None:
    """The instance still answers a plain request."""
    generation = engine.submit(engine.tokenize("The capital of France is"), greedy(4))
    assert await generation.text()
    assert generation.result is not None and generation.result.error is None


@pytest.mark.model
async def test_a_step_raising_fails_only_its_generation(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    advance = engine._advance

    def broken(seq: Any, token: int) -> None:
        if seq.generation.params.max_tokens == 7:  # the victim: a decoder blowing up
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        advance(seq, token)

    monkeypatch.setattr(engine, "_advance", broken)
    victim = engine.submit(engine.tokenize("Once upon a time"), greedy(7))
    neighbour = engine.submit(engine.tokenize("List of fruits:"), greedy(12))
    assert await outcome(victim) == "InternalError"
    assert await outcome(neighbour) in ("length", "stop")
    monkeypatch.undo()
    await served(engine)
    assert engine.restarts == 0 and engine.outstanding == 0


@pytest.mark.model
async def test_sampler_setup_raising_fails_only_its_generation(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(params: SamplingParams) -> Any:
        raise RuntimeError("injected: sampler chain init")

    monkeypatch.setattr(engine._chooser, "chain", broken)
    failed = engine.submit(engine.tokenize("Hello"), SamplingParams(max_tokens=4))
    with pytest.raises(InternalError) as info:
        await failed.text()
    assert "RuntimeError" not in info.value.message  # generic on the wire
    monkeypatch.undo()
    await served(engine)
    assert engine.active == 0 and engine.outstanding == 0


@pytest.mark.model
async def test_the_loop_raising_is_restarted(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = engine._step
    crashes: list[int] = []

    def crash_once() -> None:
        if not crashes:
            crashes.append(1)
            raise RuntimeError("injected: the loop itself")
        step()

    monkeypatch.setattr(engine, "_step", crash_once)
    running = engine.submit(engine.tokenize("Once upon a time"), greedy(8))
    assert await outcome(running) == "InternalError"
    await served(engine)
    assert engine.restarts == 1 and crashes == [1] and engine.outstanding == 0


@pytest.mark.model
async def test_lone_surrogate_in_a_prompt(engine: Engine) -> None:
    with pytest.raises(InvalidParameterError, match="lone surrogate"):
        engine.tokenize("abc \ud800")


@pytest.mark.model
async def test_full_queue_refuses_at_once_then_drains(engine: Engine) -> None:
    tokens = engine.tokenize("Write a very long story about a dragon:")
    # 2 slots + 2 waiting; no await in between, so none of them can have finished
    held = [engine.submit(tokens, greedy(400)) for _ in range(4)]
    with pytest.raises(ServerBusyError) as info:
        engine.submit(tokens, greedy(4))
    assert info.value.status == 503 and info.value.code == "server_busy"
    assert info.value.headers == {"Retry-After": str(RETRY_AFTER_SECONDS)}
    assert engine.outstanding == 4
    held[3].cancel()  # a cancelled request stops counting at once
    late = engine.submit(tokens, greedy(4))
    with pytest.raises(ServerBusyError):
        engine.submit(tokens, greedy(4))
    for generation in held:
        generation.cancel()
    assert [await outcome(g) for g in held] == ["cancelled"] * 4
    assert await outcome(late) in ("length", "stop")
    assert engine.outstanding == 0 and engine.queued == 0
    await served(engine)


@pytest.mark.model
async def test_closing_stops_running_work_at_the_next_step(default_model_path: Path) -> None:
    engine = Engine.load(default_model_path, LoadOptions(context_length=512, parallel=1))
    try:
        running = engine.submit(engine.tokenize("Once upon a time"), greedy(480))
        waiting = engine.submit(engine.tokenize("Hello"), greedy(4))
        await anext(aiter(running.stream()))  # it is generating
    finally:
        await asyncio.to_thread(engine.close)
    assert await outcome(running) == "ShuttingDownError"
    assert await outcome(waiting) == "ShuttingDownError"
    assert running.result is not None and running.result.completion_tokens < 480
    with pytest.raises(ShuttingDownError):
        engine.submit([2, 3], greedy(1))


# --- embedder ------------------------------------------------------------------------------


@pytest.fixture
def embedder() -> Iterator[Embedder]:
    fake = FakeEmbedder(options=LoadOptions(context_length=512, queue_length=1))
    yield fake
    fake.close()


LONG_BATCH = [f"{i} " + "lorem ipsum dolor sit amet " * 4 for i in range(600)]


async def test_lone_surrogate_fails_that_request_only(embedder: Embedder) -> None:
    with pytest.raises(InvalidParameterError, match=r"input\[1\].*lone surrogate"):
        await embedder.embed(["fine", "\ud800"])
    assert len((await embedder.embed(["still serving"])).vectors) == 1
    assert embedder.restarts == 0


async def test_a_group_raising_fails_only_its_request(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(group: list[list[int]]) -> Any:
        raise MemoryError("injected")

    monkeypatch.setattr(embedder, "_embed_group", broken)
    with pytest.raises(InternalError):
        await embedder.embed(["one", "two"])
    monkeypatch.undo()
    assert len((await embedder.embed(["served again"])).vectors) == 1
    assert embedder.status == "idle" and embedder.outstanding == 0


async def test_a_departed_client_stops_at_the_next_group(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = GroupGate(embedder)
    monkeypatch.setattr(embedder, "_embed_group", gate)
    request = asyncio.create_task(embedder.embed(LONG_BATCH))
    await gate.wait_entered()
    request.cancel()  # what aiohttp does to the handler when the client disconnects
    await asyncio.wait([request])
    gate.gate.set()
    after = await embedder.embed(["after"])  # queued behind: served once the batch stopped
    assert len(after.vectors) == 1
    assert len(gate.sizes) == 2 and gate.sizes[1] == 1  # one group of the 600 inputs, no more
    assert gate.sizes[0] < len(LONG_BATCH)
    assert embedder.outstanding == 0


async def test_full_queue_refuses_at_once(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = GroupGate(embedder)
    monkeypatch.setattr(embedder, "_embed_group", gate)
    running = asyncio.create_task(embedder.embed(["held in its first group"]))
    await gate.wait_entered()
    waiting = asyncio.create_task(embedder.embed(["waiting"]))
    await poll(lambda: embedder.outstanding == 2)
    with pytest.raises(ServerBusyError) as info:
        await embedder.embed(["one too many"])
    assert info.value.headers == {"Retry-After": str(RETRY_AFTER_SECONDS)}
    gate.gate.set()
    assert len((await running).vectors) == len((await waiting).vectors) == 1
    assert embedder.outstanding == 0
    assert len((await embedder.embed(["drained"])).vectors) == 1


async def test_closing_mid_batch_stops_after_the_group() -> None:
    embedder = FakeEmbedder(options=LoadOptions(context_length=512))
    gate = GroupGate(embedder)
    embedder._embed_group = gate  # type: ignore[method-assign]
    request = asyncio.create_task(embedder.embed(LONG_BATCH))
    await gate.wait_entered()
    closing = asyncio.create_task(asyncio.to_thread(embedder.close))
    await poll(lambda: embedder._closed)
    gate.gate.set()
    await closing
    with pytest.raises(ShuttingDownError):
        await request
    assert len(gate.sizes) == 1  # the batch stopped after the group in progress
    with pytest.raises(ShuttingDownError):
        await embedder.embed(["too late"])
    assert not embedder._thread.is_alive()
