"""The FakeEmbedder (tests/fakes.py) keeps the embedder's contract, so that embedding plumbing
tests on it test the plumbing: order, equal inputs equal vectors, unit length, token counts,
input errors naming ``input[i]``, group sizes, the queue bound, cancellation between groups.
(A group raising and closing mid-batch: tests/inference/test_workers.py, on the fake.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fakes import FAKE_WIDTH, FakeEmbedder, FakeLoader, GroupGate, fake_tokenize

from lms.errors import (
    ContextOverflowError,
    InvalidParameterError,
    ServerBusyError,
)
from lms.inference import catalog
from lms.inference.embedder import MAX_SEQUENCES
from lms.inference.generation import LoadOptions
from lms.inference.worker import RETRY_AFTER_SECONDS

DEADLINE = 120.0  # seconds: generous, only ever reached when something is broken
#: 600 inputs of 112 tokens: several groups of MAX_SEQUENCES (32 * 112 fits 4096 tokens)
LONG_BATCH = [f"{i:03d} " + "lorem ipsum dolor sit amet " * 4 for i in range(600)]


@pytest.fixture
def fake() -> Iterator[FakeEmbedder]:
    embedder = FakeEmbedder(options=LoadOptions(context_length=64, queue_length=1))
    yield embedder
    embedder.close()


async def poll(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


async def test_unit_vectors_in_order_equal_inputs_equal_vectors(fake: FakeEmbedder) -> None:
    texts = ["alpha", "beta", "alpha", "a longer third input"]
    result = await fake.embed(texts)
    assert [v.shape for v in result.vectors] == [(FAKE_WIDTH,)] * 4 and fake.n_embd == FAKE_WIDTH
    norms = [float(np.linalg.norm(v)) for v in result.vectors]
    assert norms == pytest.approx([1.0] * 4, abs=1e-6)
    first, second, again, third = result.vectors
    assert first.tolist() == again.tolist()
    assert float(first @ second) < 0.99 and float(first @ third) < 0.99
    backward = await fake.embed(texts[::-1])  # order kept: each input keeps its own vector
    assert [v.tolist() for v in backward.vectors] == [v.tolist() for v in result.vectors[::-1]]
    alone = await fake.embed([texts[3]])  # the batch around an input changes nothing
    assert alone.vectors[0].tolist() == third.tolist()


async def test_tokens_are_bytes_and_token_arrays_match_text(fake: FakeEmbedder) -> None:
    result = await fake.embed(["hi", "héllo"])
    assert result.token_counts == [3, 7]  # BOS + one per UTF-8 byte
    assert result.total_tokens == 10
    assert fake.count_tokens("héllo") == 7
    from_tokens = await fake.embed([fake_tokenize("hi")])
    assert from_tokens.vectors[0].tolist() == result.vectors[0].tolist()


async def test_bad_inputs_name_the_input(fake: FakeEmbedder) -> None:
    with pytest.raises(ContextOverflowError, match=r"'input\[1\]' has 65 tokens .* 64") as info:
        await fake.embed(["fine", "x" * 64])
    assert (info.value.status, info.value.code) == (400, "context_length_exceeded")
    assert info.value.param == "input"
    with pytest.raises(InvalidParameterError, match=r"'input\[0\]' holds a lone surrogate"):
        await fake.embed(["\ud800"])
    with pytest.raises(InvalidParameterError, match=r"input\[0\].*outside the vocabulary"):
        await fake.embed([[2, fake.n_vocab]])
    with pytest.raises(InvalidParameterError, match=r"'input\[1\]' is an empty string"):
        await fake.embed(["x", ""])
    with pytest.raises(InvalidParameterError, match="must not be empty"):
        await fake.embed([])
    assert len((await fake.embed(["still serving"])).vectors) == 1
    assert fake.restarts == 0 and fake.outstanding == 0 and fake.status == "idle"


async def test_groups_hold_at_most_the_context_and_max_sequences() -> None:
    embedder = FakeEmbedder(options=LoadOptions(context_length=4096))
    try:
        gate = GroupGate(embedder)
        embedder._embed_group = gate  # type: ignore[method-assign]
        gate.gate.set()  # nothing held: only the sizes are recorded
        result = await embedder.embed(LONG_BATCH[:40])
        assert len(result.vectors) == 40
        assert gate.sizes == [MAX_SEQUENCES, 40 - MAX_SEQUENCES]
        assert embedder.groups_embedded == 2
        small = FakeEmbedder(options=LoadOptions(context_length=16))
        try:
            small_gate = GroupGate(small)
            small._embed_group = small_gate  # type: ignore[method-assign]
            small_gate.gate.set()
            await small.embed(["abcdef", "ghijkl", "mnopqr"])  # 7 tokens each; 14 fit in 16
            assert small_gate.sizes == [2, 1]
        finally:
            small.close()
    finally:
        embedder.close()


async def test_full_queue_refuses_at_once(fake: FakeEmbedder) -> None:
    gate = GroupGate(fake)
    fake._embed_group = gate  # type: ignore[method-assign]
    running = asyncio.create_task(fake.embed(["held in its first group"]))
    await gate.wait_entered()
    waiting = asyncio.create_task(fake.embed(["waiting"]))
    await poll(lambda: fake.outstanding == 2)
    with pytest.raises(ServerBusyError) as info:
        await fake.embed(["one too many"])
    assert (info.value.status, info.value.code) == (503, "server_busy")
    assert info.value.headers == {"Retry-After": str(RETRY_AFTER_SECONDS)}
    gate.gate.set()
    assert len((await running).vectors) == len((await waiting).vectors) == 1
    assert fake.outstanding == 0
    assert len((await fake.embed(["drained"])).vectors) == 1


async def test_a_cancelled_request_stops_between_groups() -> None:
    embedder = FakeEmbedder(options=LoadOptions(context_length=4096))
    try:
        gate = GroupGate(embedder)
        embedder._embed_group = gate  # type: ignore[method-assign]
        request = asyncio.create_task(embedder.embed(LONG_BATCH))
        await gate.wait_entered()
        request.cancel()  # what aiohttp does to the handler when the client disconnects
        await asyncio.wait([request])
        assert embedder.outstanding == 0  # it stopped counting at once
        gate.gate.set()
        after = await embedder.embed(["after"])  # served once the batch stopped
        assert len(after.vectors) == 1
        assert gate.sizes == [MAX_SEQUENCES, 1]  # one group of the 600 inputs, no more
    finally:
        embedder.close()


async def test_the_loader_builds_one_for_embedding_mode(fake_models_dir: Path) -> None:
    loader = FakeLoader()
    [model] = catalog.discover(fake_models_dir)
    seen: list[float] = []
    built = loader(model, LoadOptions(context_length=128), True, seen.append)
    try:
        assert isinstance(built, FakeEmbedder) and loader.embedders == [built]
        assert built.n_ctx == 128 and seen == [0.0, 1.0]
        assert len((await built.embed(["x"])).vectors) == 1
    finally:
        built.close()
