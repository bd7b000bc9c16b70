"""The scripted FakeEngine (tests/fakes.py) keeps the real engine's contract, so that plumbing
tests on it test the plumbing: text, counts, stops, limits, errors, the queue bound, cancel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from fakes import FakeEngine, Reply

from lms.errors import (
    ContextOverflowError,
    InternalError,
    InvalidParameterError,
    ServerBusyError,
    ShuttingDownError,
)
from lms.inference.generation import LoadOptions, PromptProgress
from lms.inference.sampling import SamplingParams


@pytest.fixture
def fake() -> Iterator[FakeEngine]:
    engine = FakeEngine(options=LoadOptions(context_length=64, queue_length=1))
    yield engine
    engine.close()


async def test_plays_the_script_in_order(fake: FakeEngine) -> None:
    fake.say(Reply(("a", "b", "c")), "second")
    first = fake.submit(fake.tokenize("hi"), SamplingParams())
    events = [e async for e in first.events()]
    assert isinstance(events[0], PromptProgress)
    assert first.output_text == "abc"
    assert first.result is not None
    assert (first.result.finish_reason, first.result.completion_tokens) == ("stop", 3)
    assert first.result.prompt_tokens == 3  # BOS + one token per byte
    assert await fake.submit([1, 2], SamplingParams()).text() == "second"
    assert fake.script.prompts[0] == fake.tokenize("hi")


async def test_max_tokens_and_stop_strings_cut_like_the_engine(fake: FakeEngine) -> None:
    fake.say(Reply(("one", " two", " three")), Reply(("x", "y", "STOP", "z")))
    limited = fake.submit([1, 2], SamplingParams(max_tokens=2))
    assert await limited.text() == "one two"
    assert limited.result is not None and limited.result.finish_reason == "length"
    stopped = fake.submit([1, 2], SamplingParams(stop=("ST",)))
    assert await stopped.text() == "xy"
    assert stopped.result is not None and stopped.result.finish_reason == "stop"


async def test_a_scripted_error_ends_the_generation(fake: FakeEngine) -> None:
    fake.say(Reply(("partial",), error=RuntimeError("boom")))
    generation = fake.submit([1, 2], SamplingParams())
    with pytest.raises(InternalError):
        await generation.text()
    assert generation.output_text == "partial"


async def test_requests_are_checked_like_the_engine(fake: FakeEngine) -> None:
    with pytest.raises(InvalidParameterError):
        fake.submit([], SamplingParams())
    with pytest.raises(ContextOverflowError):
        fake.submit([1] * 64, SamplingParams())
    with pytest.raises(InvalidParameterError):
        fake.tokenize("\ud800")
    assert fake.detokenize(fake.tokenize("héllo")) == "héllo"


async def test_gate_queue_bound_and_cancel(fake: FakeEngine) -> None:
    gate = threading.Event()
    fake.say(Reply(("held",), gate=gate), "queued")
    running = fake.submit([1, 2], SamplingParams())
    waiting = fake.submit([1, 3], SamplingParams())
    with pytest.raises(ServerBusyError):  # one slot + queue_length 1 are taken
        fake.submit([1, 4], SamplingParams())
    waiting.cancel()  # a cancelled request stops counting at once
    third = fake.submit([1, 5], SamplingParams())
    gate.set()
    assert await running.text() == "held"
    assert await third.text() == "queued"
    await asyncio.wait_for(waiting.text(), 60)
    assert waiting.result is not None and waiting.result.finish_reason == "cancelled"
    assert fake.outstanding == 0


async def test_close_fails_what_is_held(fake: FakeEngine) -> None:
    fake.say(Reply(("never",), gate=threading.Event()))
    held = fake.submit([1, 2], SamplingParams())
    queued = fake.submit([1, 3], SamplingParams())
    await asyncio.to_thread(fake.close)
    for generation in (held, queued):
        with pytest.raises(ShuttingDownError):
            await generation.text()


async def test_submit_many_counts_each_member_and_is_all_or_nothing() -> None:
    engine = FakeEngine(options=LoadOptions(context_length=64, queue_length=3))
    try:
        gate = threading.Event()
        engine.say(Reply(("first",), gate=gate), "a", "b")
        first = engine.submit([1, 2], SamplingParams())
        deadline = asyncio.get_running_loop().time() + 60
        while engine.active == 0:  # the worker took the first request and waits at its gate
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        group = engine.submit_many([([1, 3], SamplingParams()), ([1, 4], SamplingParams())])
        assert engine.queued == 2
        with pytest.raises(ServerBusyError):  # 1 running + 2 waiting + 2 more > 1 + 3
            engine.submit_many([([1, 5], SamplingParams()), ([1, 6], SamplingParams())])
        assert engine.outstanding == 3
        gate.set()
        assert [await g.text() for g in (first, *group)] == ["first", "a", "b"]
    finally:
        engine.close()
