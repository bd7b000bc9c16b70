"""Speculative decoding on the real model: the same output as plain decoding, honest counts,
guesses from the request's own text only, clean cells afterwards, draft models.

Greedy output with guesses equals greedy output without them *up to near-ties*: verifying
guesses decodes several rows in one batch, and llama.cpp's CPU kernels round a batch of several
rows differently from one row (on this machine by up to a few tenths of a logit), which can tip
a choice between two tokens that were nearly tied. So the tests compare token by token and, at
the first difference, if any, recompute the logits there in one plain batch and require the two
tokens to be a near-tie (within NEAR_TIE). Fixed guess counts (``draft_tokens``) make the batch
shapes, hence the outputs, the same on every run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from lms.errors import InvalidParameterError
from lms.inference import speculative_steps
from lms.inference.engine import Engine, LoadOptions
from lms.inference.generation import Generation
from lms.inference.sampling import SamplingParams
from lms.inference.speculation import Lookup

pytestmark = pytest.mark.model

#: The largest logit gap between two tokens that batch-shape rounding may swap.
NEAR_TIE = 0.6

CODE = '''def parse_config(path):
    """Read the configuration file and return a dictionary of settings."""
    settings = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings
'''
PROMPT = (
    "<start_of_turn>user\nRepeat this Python code exactly.\n\n"
    + CODE
    + "<end_of_turn>\n<start_of_turn>model\n"
)


@pytest.fixture(scope="module")
def engine(default_model_path: Path) -> Iterator[Engine]:
    loaded = Engine.load(default_model_path, LoadOptions(context_length=1024, parallel=2))
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def reference(default_model_path: Path) -> Iterator[Any]:
    """Plain llama.cpp, for the logits of a prefix decoded in one batch."""
    llm = llama_cpp.Llama(
        str(default_model_path), n_ctx=1024, n_batch=1024, logits_all=True, verbose=False
    )
    yield llm
    llm.close()


@pytest.fixture
def tokens_of(monkeypatch: pytest.MonkeyPatch) -> dict[Generation, list[int]]:
    """The tokens each generation chose, in order (recorded where the engine takes them)."""
    chosen: dict[Generation, list[int]] = {}
    advance = Engine._advance

    def record(self: Engine, seq: Any, token: int) -> None:
        chosen.setdefault(seq.generation, []).append(token)
        advance(self, seq, token)

    monkeypatch.setattr(Engine, "_advance", record)
    return chosen


def greedy(**kwargs: Any) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=48, cache_prompt=False, **kwargs)


def assert_same_up_to_near_ties(
    reference: Any, prompt: list[int], plain: list[int], guessed: list[int]
) -> None:
    for i, (a, b) in enumerate(zip(plain, guessed, strict=False)):
        if a != b:
            reference.reset()
            reference.eval(prompt + plain[:i])
            logits = np.array(reference.scores[len(prompt) + i - 1])
            gap = abs(float(logits[a]) - float(logits[b]))
            assert gap < NEAR_TIE, f"token {i}: {a} vs {b} differ by {gap:.3f} logits"
            return
    assert len(plain) == len(guessed)


async def run(engine: Engine, prompt: list[int], params: SamplingParams) -> Generation:
    generation = engine.submit(prompt, params)
    await generation.text()
    assert generation.result is not None and generation.result.error is None
    return generation


async def test_greedy_output_is_plain_decodings(
    engine: Engine, reference: Any, tokens_of: dict[Generation, list[int]]
) -> None:
    prompt = engine.tokenize(PROMPT)
    plain = await run(engine, prompt, greedy(speculative=False))
    for k in (3, 12):
        guessed = await run(engine, prompt, greedy(draft_tokens=k))
        draft = guessed.result.draft if guessed.result else None
        assert draft is not None and draft.accepted > 0  # the guesses were used
        assert_same_up_to_near_ties(reference, prompt, tokens_of[plain], tokens_of[guessed])


async def test_sampled_output_with_a_seed_is_plain_decodings(
    engine: Engine, tokens_of: dict[Generation, list[int]]
) -> None:
    # The chain sees the same tokens in the same order and draws the same random numbers:
    # with a seed, guessing changes nothing (near-ties aside, which a draw almost never meets).
    prompt = engine.tokenize(PROMPT)
    params = {"temperature": 0.7, "seed": 42, "max_tokens": 40, "cache_prompt": False}
    plain = await run(engine, prompt, SamplingParams(speculative=False, **params))
    guessed = await run(engine, prompt, SamplingParams(draft_tokens=7, **params))
    assert tokens_of[guessed] == tokens_of[plain]
    assert guessed.result is not None and guessed.result.draft is not None
    assert guessed.result.draft.total > 0


async def test_counts_add_up_and_speculative_false_reports_none(engine: Engine) -> None:
    prompt = engine.tokenize(PROMPT)
    guessed = await run(engine, prompt, greedy())
    assert guessed.result is not None
    draft = guessed.result.draft
    assert draft is not None and draft.model is None
    assert draft.total == draft.accepted + draft.rejected + draft.ignored
    assert draft.accepted > 0
    assert guessed.result.completion_tokens > draft.accepted  # every step also adds its own
    plain = await run(engine, prompt, greedy(speculative=False))
    assert plain.result is not None and plain.result.draft is None


async def test_sequences_with_and_without_guesses_share_steps(
    engine: Engine, reference: Any, tokens_of: dict[Generation, list[int]]
) -> None:
    prompt = engine.tokenize(PROMPT)
    alone = await run(engine, prompt, greedy(speculative=False))
    together = engine.submit_many(
        [(prompt, greedy(draft_tokens=7)), (prompt, greedy(speculative=False))]
    )
    await asyncio.gather(*(g.text() for g in together))
    guessing, plain = together
    assert guessing.result is not None and guessing.result.draft is not None
    assert guessing.result.draft.accepted > 0
    assert plain.result is not None and plain.result.draft is None
    for generation in together:
        assert_same_up_to_near_ties(reference, prompt, tokens_of[alone], tokens_of[generation])


async def test_guesses_come_from_the_requests_own_text(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tokens_of: dict[Generation, list[int]]
) -> None:
    lookups: list[Lookup] = []

    class Recording(Lookup):
        def __init__(self, tokens: list[int]) -> None:
            super().__init__(tokens)
            lookups.append(self)

    monkeypatch.setattr(speculative_steps, "Lookup", Recording)
    prompts = [engine.tokenize(PROMPT), engine.tokenize("Count: 1, 2, 3, 4, 5, 6,")]
    generations = engine.submit_many([(p, greedy(draft_tokens=4)) for p in prompts])
    await asyncio.gather(*(g.text() for g in generations))
    assert len(lookups) == 2
    for generation, prompt in zip(generations, prompts, strict=True):
        own = prompt + tokens_of[generation]
        mine = [lookup for lookup in lookups if lookup.tokens[: len(prompt)] == prompt]
        assert len(mine) == 1
        assert own[: len(mine[0].tokens)] == mine[0].tokens  # nothing but its own tokens


async def test_rejected_guesses_leave_no_cells(engine: Engine) -> None:
    prompt = engine.tokenize(PROMPT)
    first = await run(engine, prompt, greedy(draft_tokens=15))
    assert first.result is not None and first.result.draft is not None
    assert first.result.draft.rejected + first.result.draft.ignored > 0
    # The slot holds exactly the prompt and the answer (less its last token, never decoded):
    # a follow-up that extends them reuses every cell, and answers as a cold run does.
    follow = prompt + engine.tokenize(first.output_text, special=False)[1:]
    slots = [s for s in range(2) if engine._cache.cached(s)]
    held = {s: llama_cpp.llama_memory_seq_pos_max(engine._ctx.memory, s) + 1 for s in slots}
    assert any(held[s] == engine._cache.cached(s) for s in slots)
    warm = await run(engine, follow, SamplingParams(temperature=0.0, max_tokens=8))
    cold = await run(
        engine, follow, SamplingParams(temperature=0.0, max_tokens=8, cache_prompt=False)
    )
    assert warm.result is not None and warm.result.cached_tokens > len(prompt)
    assert warm.output_text == cold.output_text


async def test_a_draft_model_guesses(
    engine: Engine,
    default_model_path: Path,
    reference: Any,
    tokens_of: dict[Generation, list[int]],
) -> None:
    # The default model as its own draft (nothing smaller ships): it proves the mechanics.
    await asyncio.to_thread(engine.attach_draft, "self", default_model_path)
    assert engine.draft_models == ["self"]
    prompt = engine.tokenize("Once upon a time, in a small village by the sea,")
    plain = await run(engine, prompt, greedy(speculative=False))
    drafted = await run(engine, prompt, greedy(draft_model="self", draft_tokens=3))
    assert drafted.result is not None and drafted.result.draft is not None
    draft = drafted.result.draft
    assert draft.model == "self"
    assert draft.total == draft.accepted + draft.rejected + draft.ignored
    assert draft.accepted > draft.rejected  # it guesses what the model itself would say
    assert_same_up_to_near_ties(reference, prompt, tokens_of[plain], tokens_of[drafted])


async def test_an_unknown_draft_model_is_refused(engine: Engine) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        engine.submit(engine.tokenize("Hi"), greedy(draft_model="nothing-here"))
    assert caught.value.param == "draft_model"


async def test_a_draft_model_with_another_vocabulary_is_refused(
    engine: Engine, tmp_path: Path, make_bert_gguf: Any
) -> None:
    other = tmp_path / "bert.gguf"
    make_bert_gguf(other)
    with pytest.raises(InvalidParameterError) as caught:
        await asyncio.to_thread(engine.attach_draft, "bert", other)
    assert caught.value.param == "draft_model"
    assert "bert" not in engine.draft_models
