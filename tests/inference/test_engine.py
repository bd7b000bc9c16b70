"""The engine on the real default model: streaming, stops, cancellation, queueing, limits."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import pytest

from lms.errors import ContextOverflowError, ModelLoadError, ShuttingDownError
from lms.inference.engine import Engine, LoadOptions
from lms.inference.sampling import SamplingParams
from lms.inference.vocab import Vocabulary
from lms.inference.worker import load_model

pytestmark = pytest.mark.model

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def engine(default_model_path: Path) -> Iterator[Engine]:
    loaded = Engine.load(default_model_path, LoadOptions(context_length=512))
    yield loaded
    loaded.close()


def greedy(max_tokens: int, **kwargs: object) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kwargs)  # type: ignore[arg-type]


async def test_streams_token_by_token(engine: Engine) -> None:
    generation = engine.submit(engine.tokenize("The capital of France is"), greedy(10))
    pieces = [piece async for piece in generation.stream()]
    assert len(pieces) >= 5
    assert generation.result is not None
    assert generation.result.completion_tokens == 10
    assert generation.result.finish_reason == "length"
    assert generation.result.time_to_first_token > 0


async def test_greedy_is_deterministic(engine: Engine) -> None:
    prompt = engine.tokenize("Water boils at")
    first = await engine.submit(prompt, greedy(12)).text()
    second = await engine.submit(prompt, greedy(12)).text()
    assert first == second and first


async def test_context_caps_generation(engine: Engine) -> None:
    prompt = engine.tokenize("one two three " * 150)
    generation = engine.submit(prompt, SamplingParams(temperature=0.0, repeat_penalty=1.3))
    await generation.text()
    assert generation.result is not None
    assert generation.result.finish_reason in ("length", "stop")
    assert len(prompt) + generation.result.completion_tokens <= engine.n_ctx_per_seq


async def test_prompt_over_context_is_refused(engine: Engine) -> None:
    with pytest.raises(ContextOverflowError):
        engine.submit(engine.tokenize("word " * 600), greedy(4))


async def test_cancel_stops_within_one_token(engine: Engine) -> None:
    generation = engine.submit(engine.tokenize("Tell me a story:"), greedy(200))
    seen = 0
    async for _ in generation.stream():
        seen += 1
        if seen == 3:
            generation.cancel()
    assert generation.result is not None
    assert generation.result.finish_reason == "cancelled"
    # The worker checks the flag before every decode step: at most one more token.
    assert generation.result.completion_tokens <= 5


async def test_busy_instance_queues(engine: Engine) -> None:
    prompt = engine.tokenize("List of fruits:")
    first = engine.submit(prompt, greedy(30))
    second = engine.submit(prompt, greedy(30))
    await asyncio.sleep(0)
    assert engine.queued >= 1 or engine.active == 1
    a, b = await asyncio.gather(first.text(), second.text())
    assert a == b  # each request ran alone, with the same greedy output


async def test_stop_strings_cut_output(engine: Engine) -> None:
    prompt = engine.tokenize("The capital of France is")
    full = await engine.submit(prompt, greedy(20)).text()
    word = full.split()[1]
    generation = engine.submit(prompt, greedy(20, stop=(word,)))
    text = await generation.text()
    assert word not in text
    assert generation.result is not None and generation.result.finish_reason == "stop"


async def test_sampled_generation_respects_seed(engine: Engine) -> None:
    prompt = engine.tokenize("Once upon a time")
    params = SamplingParams(temperature=0.9, seed=7, max_tokens=15, repeat_penalty=1.1)
    a = await engine.submit(prompt, params).text()
    b = await engine.submit(prompt, params).text()
    assert a == b


async def test_unload_cuts_in_flight_with_clear_error(default_model_path: Path) -> None:
    own = Engine.load(default_model_path, LoadOptions(context_length=256))
    generation = engine_generation = own.submit(own.tokenize("Count:"), greedy(200))
    async for _ in generation.stream():
        break
    await asyncio.to_thread(own.close)
    with pytest.raises(ShuttingDownError):
        async for _ in engine_generation.stream():
            pass


def test_a_missing_file_is_named_as_missing_not_corrupt(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        Engine.load(tmp_path / "vanished.gguf", LoadOptions(context_length=64))
    assert "the file is gone" in info.value.message and "vanished.gguf" in info.value.message


def test_the_vocabulary_is_shared_safely_between_threads(default_model_path: Path) -> None:
    # The pipeline tokenizes in helper threads and the event loop detokenizes while the worker
    # turns sampled tokens into text: no scratch buffer is shared (ctypes releases the GIL).
    model = load_model(default_model_path)
    try:
        tokens = list(range(0, Vocabulary(model).n_tokens, 37))
        alone = [Vocabulary(model).piece(t) for t in tokens]
        shared = Vocabulary(model)  # an empty piece cache, filled by four threads at once
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            pieces = list(pool.map(shared.piece, tokens))
            texts = list(pool.map(lambda _: shared.detokenize(tokens), range(4)))
        assert pieces == alone
        assert texts == [b"".join(alone).decode("utf-8", "replace")] * 4
    finally:
        model.close()
