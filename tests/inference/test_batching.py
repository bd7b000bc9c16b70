"""Continuous batching: several sequences per context, joining and leaving between steps."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from lms.errors import InvalidRequestError
from lms.inference.engine import Engine, LoadOptions
from lms.inference.generation import cache_scope
from lms.inference.sampling import SamplingParams

pytestmark = pytest.mark.model

PROMPTS = ["The capital of France is", "Once upon a time", "List of fruits:", "1, 2, 3,"]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n)


@pytest.fixture(scope="module")
def engine4(default_model_path: Path) -> Iterator[Engine]:
    loaded = Engine.load(default_model_path, LoadOptions(context_length=512, parallel=4))
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def engine2(default_model_path: Path) -> Iterator[Engine]:
    loaded = Engine.load(default_model_path, LoadOptions(context_length=512, parallel=2))
    yield loaded
    loaded.close()


async def test_eight_requests_through_four_slots(engine4: Engine) -> None:
    generations = [engine4.submit(engine4.tokenize(p), greedy(24)) for p in PROMPTS * 2]
    await asyncio.sleep(0.05)
    assert engine4.active <= 4
    texts = await asyncio.gather(*(g.text() for g in generations))
    for generation, text in zip(generations, texts, strict=True):
        result = generation.result
        assert result is not None and result.error is None
        assert text
        assert result.completion_tokens == 24 or result.finish_reason == "stop"
        assert result.prompt_tokens == len(generation.prompt_tokens)
    assert engine4.active == 0 and engine4.queued == 0


async def test_width_two_matches_single_requests(engine2: Engine) -> None:
    singles = [await engine2.submit(engine2.tokenize(p), greedy(32)).text() for p in PROMPTS[:2]]
    together = await asyncio.gather(
        *(engine2.submit(engine2.tokenize(p), greedy(32)).text() for p in PROMPTS[:2])
    )
    assert list(together) == singles


async def test_identical_prompts_identical_outputs_at_width_four(engine4: Engine) -> None:
    # All four must start in one step: a sequence prefilled alone computes its cells at another
    # batch shape, which may tip a near-tie ("a little girl" / "a small town") without any
    # cross-talk. Tokenizing first keeps the four submits free of ctypes calls, which release
    # the GIL and let the worker start on the first before the others are queued. A cache scope
    # of its own keeps cells of earlier tests out of it for the same reason.
    cache_scope.set("identical-width-four")
    tokens = engine4.tokenize(PROMPTS[1])
    generations = [engine4.submit(tokens, greedy(40)) for _ in range(4)]
    outputs = await asyncio.gather(*(g.text() for g in generations))
    assert len(set(outputs)) == 1 and outputs[0]


async def test_cancel_one_of_four(engine4: Engine) -> None:
    generations = [engine4.submit(engine4.tokenize(p), greedy(60)) for p in PROMPTS]
    victim = generations[1]
    async for _ in victim.stream():
        victim.cancel()
    assert victim.result is not None and victim.result.finish_reason == "cancelled"
    late = engine4.submit(engine4.tokenize("Hello"), greedy(8))  # reuses the freed slot
    texts = await asyncio.gather(*(g.text() for g in [generations[0], *generations[2:], late]))
    assert all(texts)
    for generation in [generations[0], *generations[2:]]:
        assert generation.result is not None
        assert generation.result.finish_reason in ("length", "stop")
    assert late.result is not None and late.result.completion_tokens >= 1


async def test_failing_request_leaves_others(engine4: Engine) -> None:
    good = engine4.submit(engine4.tokenize(PROMPTS[0]), greedy(20))
    with pytest.raises(InvalidRequestError):  # a bad grammar is refused before it joins
        engine4.submit(engine4.tokenize(PROMPTS[2]), SamplingParams(grammar="root ::= ["))
    assert await good.text()
    assert good.result is not None and good.result.error is None
