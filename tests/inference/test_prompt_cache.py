"""Prompt caching: a finished sequence's KV cells serve the next prompt that shares their prefix.

Each test runs in its own cache scope (as the API sets one per token), so tests sharing the
module's engine never see each other's cells unless they mean to.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lms.inference.engine import Engine, GenerationResult, LoadOptions
from lms.inference.generation import cache_scope
from lms.inference.sampling import SamplingParams

pytestmark = pytest.mark.model

PROMPT = "The lighthouse keeper climbed the stairs every evening, and"


@pytest.fixture(scope="module")
def engine(default_model_path: Path) -> Iterator[Engine]:
    # No prompt-lookup guesses: warm and cold runs are compared, and how many tokens a step
    # guesses follows measured costs (tests/inference/test_speculative.py covers guessing).
    options = LoadOptions(context_length=2048, parallel=2, speculative=False)
    loaded = Engine.load(default_model_path, options)
    yield loaded
    loaded.close()


async def run(
    engine: Engine, tokens: list[int], scope: str, max_tokens: int = 16
) -> tuple[str, GenerationResult]:
    reset = cache_scope.set(scope)
    try:
        generation = engine.submit(tokens, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    finally:
        cache_scope.reset(reset)
    text = await generation.text()
    assert generation.result is not None and generation.result.error is None
    return text, generation.result


async def test_a_repeated_prompt_decodes_only_its_last_token(engine: Engine) -> None:
    tokens = engine.tokenize(PROMPT)
    first, cold = await run(engine, tokens, "repeat")
    again, warm = await run(engine, tokens, "repeat")
    assert cold.cached_tokens == 0
    assert warm.cached_tokens == len(tokens) - 1
    assert again == first


async def test_the_next_turn_continues_from_the_previous_cells(engine: Engine) -> None:
    tokens = engine.tokenize(PROMPT)
    answer, _ = await run(engine, tokens, "chat")
    follow_up = engine.tokenize(PROMPT + answer + " Then the storm came, and")
    warm_text, warm = await run(engine, follow_up, "chat")
    cold_text, cold = await run(engine, follow_up, "chat-fresh")  # same prompt, no cells
    assert cold.cached_tokens == 0
    assert warm.cached_tokens >= len(tokens)  # the prompt and (most of) the answer
    assert warm_text == cold_text


async def test_scopes_never_share_cells(engine: Engine) -> None:
    tokens = engine.tokenize(PROMPT + " one day")
    await run(engine, tokens, "alice")
    _, other = await run(engine, tokens, "bob")
    assert other.cached_tokens == 0


async def test_reuse_past_the_sliding_window(engine: Engine) -> None:
    # gemma 3 attends over a 512-token window in most layers: reuse must hold there too.
    tokens = engine.tokenize(" ".join(f"item {i}," for i in range(260)) + " and finally")
    assert len(tokens) > 700
    first, _ = await run(engine, tokens, "long", max_tokens=12)
    again, warm = await run(engine, tokens, "long", max_tokens=12)
    assert warm.cached_tokens == len(tokens) - 1
    assert again == first


async def test_a_cancelled_sequence_leaves_usable_cells(engine: Engine) -> None:
    tokens = engine.tokenize(PROMPT + " at night")
    reset = cache_scope.set("cancel")
    try:
        victim = engine.submit(tokens, SamplingParams(temperature=0.0, max_tokens=64))
    finally:
        cache_scope.reset(reset)
    async for _ in victim.stream():
        victim.cancel()
    assert victim.result is not None and victim.result.finish_reason == "cancelled"
    warm_text, warm = await run(engine, tokens, "cancel")
    cold_text, _ = await run(engine, tokens, "cancel-fresh")
    assert warm.cached_tokens == len(tokens) - 1
    assert warm_text == cold_text
