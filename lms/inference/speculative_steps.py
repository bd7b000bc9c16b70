"""The engine's speculative steps: which guesses each generating sequence verifies, drafting
them with a draft model, measuring decode costs, verifying (docs/SPECULATIVE.md).

A mixin of :class:`lms.inference.engine.Engine` (its worker thread runs all of it but
:meth:`Speculating.attach_draft`), kept apart so that the engine's step loop stays readable;
:class:`Running` is the state of one sequence in a slot, which both use. What to guess and when
it pays is decided in :mod:`lms.inference.speculation` (pure Python).
"""

from __future__ import annotations

import codecs
import logging
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import _internals as internals

from lms.errors import ShuttingDownError
from lms.inference.drafter import Drafter
from lms.inference.generation import DraftStats, Generation, LoadOptions
from lms.inference.sampling import SamplingParams, StopMatcher
from lms.inference.speculation import (
    DRAFT_MODEL_MATCH,
    MAX_GUESSES,
    Candidate,
    Costs,
    Guessing,
    Lookup,
    match_class,
    plan,
)

__all__ = ["Running", "Speculating", "draft_stats"]

log = logging.getLogger("lms.engine")


@dataclass
class Running:
    generation: Generation
    slot: int
    max_tokens: int
    stops: StopMatcher
    sampler: internals.LlamaSampler | None
    decoder: codecs.IncrementalDecoder
    grammar: Any = None  # a llama_sampler_p of the request's grammar (kept out of the chain)
    reused: int = 0  # leading prompt tokens found in the slot's cells
    prefilled: int = 0
    n_past: int = 0
    last_token: int = -1
    generated: int = 0
    output: list[int] = field(default_factory=list)  # sampled tokens, fed back one per step
    first_token_at: float | None = None
    started_at: float = field(default_factory=time.perf_counter)
    guessing: Guessing | None = None  # None: speculation is off for this request

    @property
    def in_prefill(self) -> bool:
        return self.prefilled < len(self.generation.prompt_tokens)


class Speculating:
    """Speculative decoding for :class:`~lms.inference.engine.Engine` (a mixin: the engine
    provides the attributes and methods declared here)."""

    path: Path
    options: LoadOptions
    n_ctx_per_seq: int
    vocab: Any
    _ctx: Any
    _batch: Any
    _slots: list[Running | None]
    _closed: bool
    _costs: Costs
    _max_rows: int
    _calibrated: bool
    _drafters: dict[str, Drafter]

    @abstractmethod
    def _sample(self, seq: Running, index: int) -> int: ...

    @abstractmethod
    def _advance(self, seq: Running, token: int) -> None: ...

    def _init_speculation(self) -> None:
        #: Measured cost of a decode by rows (what guessing is weighed against).
        self._costs = Costs()
        self._max_rows = min(
            self.options.batch_size, 128, self.options.parallel * (MAX_GUESSES + 1)
        )
        self._calibrated = False
        #: Draft models by key (attach_draft); used by the worker only.
        self._drafters = {}

    def attach_draft(self, key: str, path: Path) -> None:
        """Load ``path`` as the draft model ``key`` for requests naming it (blocking: call it
        off the event loop; once per key). Raises InvalidParameterError for a model whose
        vocabulary differs and ModelLoadError for a file llama.cpp cannot load."""
        if key in self._drafters:
            return
        drafter = Drafter.load(key, path, self.options, self.vocab.pointer)
        if self._closed:
            drafter.close()
            raise ShuttingDownError(f"the model {self.path.name} is being unloaded")
        self._drafters.setdefault(key, drafter)  # the worker only reads the dict

    @property
    def draft_models(self) -> list[str]:
        """Keys of the attached draft models."""
        return list(self._drafters)

    def _speculates(self, params: SamplingParams) -> bool:
        if not params.speculative:
            return False
        asked = params.draft_model is not None or params.draft_tokens is not None
        return asked or self.options.speculative

    def _guesses(self, generating: list[Running], *, prefill: bool) -> dict[int, list[int]]:
        """The guesses each generating sequence verifies this step, by slot (see
        :mod:`lms.inference.speculation`). None while a prompt is being prefilled: its chunk
        dominates the step's cost and guesses would only take its room."""
        if prefill:
            return {}
        candidates: list[Candidate] = []
        drafted: list[Running] = []  # sequences whose guesses come from a draft model
        for seq in generating:
            guessing = seq.guessing
            if guessing is None:
                continue
            # Room: guesses take positions in the context, and none past the output's limit.
            limit = min(
                MAX_GUESSES,
                seq.max_tokens - seq.generated - 1,
                self.n_ctx_per_seq - seq.n_past - 1,
            )
            if limit < 1:
                continue
            exact = seq.generation.params.draft_tokens
            if seq.generation.params.draft_model is not None:
                # The draft model guesses after the plan says how many: plan with room for all.
                rate = guessing.rate(DRAFT_MODEL_MATCH)
                guessing.current = match_class(DRAFT_MODEL_MATCH)
                candidates.append(Candidate(seq.slot, [0] * limit, rate, exact))
                drafted.append(seq)
                continue
            if guessing.lookup is None:
                guessing.lookup = Lookup(seq.generation.prompt_tokens + seq.output)
            else:
                known = len(guessing.lookup.tokens) - len(seq.generation.prompt_tokens)
                guessing.lookup.extend(seq.output[known:])
            guess, matched = guessing.lookup.guess(limit)
            guessing.current = match_class(matched)
            if guess:
                candidates.append(Candidate(seq.slot, guess, guessing.rate(matched), exact))
        if not candidates:
            return {}
        if not self._calibrated:
            self._calibrate(generating[0])
        chosen = plan(len(generating), candidates, self._costs, self._max_rows)
        picked = {c.key: c.guess[: chosen[c.key]] for c in candidates if c.key in chosen}
        by_slot = {c.key: c for c in candidates}
        draft_slots = {seq.slot for seq in drafted}  # placeholders there: nothing to judge
        for seq in generating:  # a guess not verified is still judged, for free
            cand = by_slot.get(seq.slot)
            free = seq.slot not in picked and seq.slot not in draft_slots
            if seq.guessing is not None and cand is not None and free:
                seq.guessing.unverified = cand.guess[0]
        self._draft(drafted, chosen, picked)
        for seq in generating:
            if seq.slot in picked and seq.guessing is not None:
                seq.guessing.total += len(picked[seq.slot])
        return picked

    def _draft(
        self, drafted: list[Running], chosen: dict[int, int], picked: dict[int, list[int]]
    ) -> None:
        """Replace the planned guesses of sequences with a draft model by that model's."""
        by_model: dict[str, list[tuple[int, list[int], int]]] = {}
        for seq in drafted:
            if seq.slot in chosen:
                key = seq.generation.params.draft_model
                assert key is not None
                text = seq.generation.prompt_tokens + seq.output
                by_model.setdefault(key, []).append((seq.slot, text, chosen[seq.slot]))
        for key, wanted in by_model.items():
            try:
                picked.update(self._drafters[key].guess(wanted))
            except Exception:  # a failing draft costs its guesses, never the generation
                log.exception("the draft model %s failed", key)
                for slot, _, _ in wanted:
                    picked.pop(slot, None)

    def _calibrate(self, seq: Running) -> None:
        """Measure what a decode of 1 to 8, 12, 16, … 64 rows costs, once per instance, before
        the first guess is weighed (about 1.5 s on a small CPU): rows of ``seq``'s
        next token past its cells, removed again. Steps measure the sizes they use from then on
        (:class:`Costs`)."""
        room = self.n_ctx_per_seq - seq.n_past
        sizes = [n for n in [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64] if n <= self._max_rows]
        if sizes[-1] > room:
            return  # too close to the context's end: measure for a later sequence
        self._calibrated = True
        batch = self._batch
        measured: dict[int, float] = {}
        # Two passes, the faster of each kept: a busy machine only ever adds time. The first
        # decode also wakes the threads up.
        for n in [1, *sizes, *sizes]:
            batch.n_tokens = 0
            for i in range(n):
                batch.token[i] = seq.last_token
                batch.pos[i] = seq.n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq.slot
                batch.logits[i] = True
            batch.n_tokens = n
            started = time.perf_counter()
            rc = llama_cpp.llama_decode(self._ctx.ctx, batch)
            ms = (time.perf_counter() - started) * 1000
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.slot, seq.n_past, -1)
            if rc != 0:
                break
            measured[n] = min(ms, measured.get(n, ms))
        batch.n_tokens = 0
        for n, ms in measured.items():
            self._costs.record(n, ms)

    def _verify(self, seq: Running, index: int, guess: list[int]) -> None:
        """Take the model's choice at each of ``seq``'s rows while it agrees with the guess.

        Row ``j`` holds the logits after the guess's first ``j`` tokens. The token is chosen
        from it exactly as without guessing (argmax, or the request's sampler chain and grammar,
        which see the same tokens in the same order and draw the same random numbers), so the
        output is what plain decoding gives; a guess is accepted when it equals that choice.
        For a sampled request this is the standard speculative rule for a guess that is one
        certain token: it is kept with the probability the model gives it, and otherwise the
        model's own draw stands. The cells of rejected guesses are removed.
        """
        guessing = seq.guessing
        assert guessing is not None
        base = seq.n_past - len(guess) - 1  # the position of the row of the last chosen token
        for j in range(len(guess) + 1):
            seq.n_past = base + 1 + j  # the cells before this row's token are right
            token = self._sample(seq, index + j)
            self._advance(seq, token)
            if j == len(guess):
                break
            ended = self._slots[seq.slot] is not seq
            if token != guess[j]:
                guessing.verified(right=False)
                guessing.ignored += len(guess) - j - 1
                break
            guessing.verified(right=True)
            if ended:
                guessing.ignored += len(guess) - j - 1
                break
        llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.slot, seq.n_past, -1)
        drafter = self._drafters.get(seq.generation.params.draft_model or "")
        if drafter is not None:
            drafter.forget(seq.slot, seq.n_past)


def draft_stats(seq: Running) -> DraftStats | None:
    guessing = seq.guessing
    if guessing is None:
        return None
    return DraftStats(
        model=seq.generation.params.draft_model,
        total=guessing.total,
        accepted=guessing.accepted,
        rejected=guessing.rejected,
        ignored=guessing.ignored,
    )
