"""The llama.cpp engine: one loaded model, one worker thread, a step loop over sequences.

``llama_cpp`` is imported by the inference modules that drive it (this one, its speculative
steps, the draft model, the embedder, the shared worker base, the vocabulary and token choice)
and nowhere else. The worker thread owns the llama context; the event loop talks to it through
a job queue (in) and :class:`Generation` handles (out).

The loop is written for several sequences per context: each request is a :class:`Running`
with its own ``seq_id`` (a slot), positions, sampler and stop handling; every step builds one
``llama_batch`` holding the next token of each generating sequence plus a chunk of prompt for
sequences still in prefill, makes one ``llama_decode`` call and samples each sequence from its
own logits row. With ``parallel=1`` that is plain sequential serving; raising ``parallel`` (and
``n_seq_max``) gives continuous batching without a rewrite: sequences join and leave between
steps. A finished sequence frees its slot at once but leaves its KV cells, which the next prompt
sharing their prefix reuses (:mod:`lms.inference.promptcache`); everything past the shared
prefix is removed (``llama_memory_seq_rm``) before a new sequence runs in the slot. Token choice
(sampler chains, grammars) lives in :mod:`lms.inference.choice`; guessed tokens that a step
verifies (speculative decoding) in :mod:`lms.inference.speculative_steps`.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import logging
import queue
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from lms.errors import (
    ContextOverflowError,
    InternalError,
    InvalidParameterError,
    LmsError,
    ModelLoadError,
    ServerBusyError,
    ShuttingDownError,
)
from lms.inference.choice import Chooser
from lms.inference.generation import (
    FinishReason,
    Generation,
    GenerationResult,
    Item,
    LoadOptions,
    PromptProgress,
    post,
)
from lms.inference.promptcache import PromptCache
from lms.inference.sampling import SamplingParams, StopMatcher
from lms.inference.speculation import Guessing
from lms.inference.speculative_steps import Running, Speculating, draft_stats
from lms.inference.vocab import Vocabulary
from lms.inference.worker import STOP, ModelWorker, context_params, internal_error, load_model

__all__ = [
    "Engine",
    "FinishReason",
    "Generation",
    "GenerationResult",
    "LoadOptions",
    "PromptProgress",
    "load_model",
]

log = logging.getLogger("lms.engine")


class Engine(Speculating, ModelWorker):
    """A loaded GGUF model with its context and worker thread. Build it with :meth:`load`."""

    def __init__(
        self,
        path: Path,
        options: LoadOptions,
        model: internals.LlamaModel,
        ctx: internals.LlamaContext,
    ) -> None:
        self.path = path
        self.options = options
        self._model = model
        self._ctx = ctx
        self.vocab = Vocabulary(model)
        self.n_vocab = self.vocab.n_tokens
        self.n_ctx = ctx.n_ctx()
        self.n_ctx_per_seq = self.n_ctx // options.parallel
        self._batch = llama_cpp.llama_batch_init(options.batch_size, 0, options.parallel)
        self._slots: list[Running | None] = [None] * options.parallel
        self._chooser = Chooser(self.vocab.pointer, self.n_vocab)
        self._cache = PromptCache(options.parallel)
        self._init_speculation()
        self._outbox: list[tuple[Generation, Item]] = []  # handed over once per step
        #: Members of a submit_many group not yet admitted (worker thread only).
        self._held: collections.deque[Generation] = collections.deque()
        #: Called on the event loop with every submitted generation (logs, metrics).
        self.observer: Callable[[Generation], None] | None = None
        self.status: Literal["idle", "processing_prompt", "generating"] = "idle"
        self._start_worker(
            f"engine:{path.name}", slots=options.parallel, queue_length=options.queue_length
        )

    @classmethod
    def load(
        cls, path: Path, options: LoadOptions, progress: Callable[[float], None] | None = None
    ) -> Engine:
        """Load the model file (blocking: call it off the event loop).

        ``progress`` is called from the loading thread with 0..1 as llama.cpp reads weights.
        """
        model = load_model(path, progress)
        ctx_params = context_params(options)
        try:
            ctx = internals.LlamaContext(model=model, params=ctx_params, verbose=False)
        except ValueError as exc:
            model.close()
            raise ModelLoadError(
                f"cannot create a context of {options.context_length} tokens for {path.name}"
                " (out of memory?)"
            ) from exc
        return cls(path, options, model, ctx)

    # --- called from the event loop ---------------------------------------------------------

    @property
    def active(self) -> int:
        return sum(1 for s in self._slots if s is not None)

    @property
    def queued(self) -> int:
        """Generations waiting for a slot (each member of a :meth:`submit_many` group counts)."""
        with self._jobs.mutex:
            waiting = sum(len(j) if isinstance(j, tuple) else 1 for j in self._jobs.queue)
        return waiting + len(self._held)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """See :meth:`Vocabulary.tokenize` (blocking for long text: call it off the loop)."""
        return self.vocab.tokenize(text, special=special)

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        """See :meth:`Vocabulary.detokenize`."""
        return self.vocab.detokenize(tokens, special=special)

    def submit(
        self, prompt_tokens: list[int], params: SamplingParams, *, grammar_checked: bool = False
    ) -> Generation:
        """Queue a generation; its text arrives through the returned handle.

        Raises ServerBusyError (503, ``Retry-After``) at once when the instance already holds
        ``parallel`` running and ``queue_length`` waiting generations (cancelled ones do not
        count). ``grammar_checked`` says the caller already ran :meth:`check_grammar` on
        ``params.grammar`` in a worker thread (compiling a grammar is CPU work the event loop
        must not do; :func:`lms.pipeline.start` does so).
        """
        return self.submit_many([(prompt_tokens, params)], grammar_checked=grammar_checked)[0]

    def check_grammar(self, grammar: str) -> None:
        """Refuse a grammar that does not compile against this model's vocabulary (a 400, at
        submission, not mid-stream). Blocking (it parses the whole grammar): call it off the
        event loop; safe beside the worker (it only reads the vocabulary)."""
        self._chooser.check_grammar(grammar)

    def submit_many(
        self,
        requests: Sequence[tuple[list[int], SamplingParams]],
        *,
        grammar_checked: bool = False,
    ) -> list[Generation]:
        """Queue several generations as one job: the worker admits them in the same step, as far
        as slots are free (what does not fit waits at the head of the queue).

        Requests admitted in one step are prefilled in one batch, so their results do not depend
        on when each happened to be queued (what OpenAI's ``n`` > 1 needs, and what makes
        batching tests deterministic). Every request is checked before any is queued: one bad
        request, or too little room in the queue for all of them (ServerBusyError), refuses the
        whole call.
        """
        if not requests:
            return []
        for prompt_tokens, params in requests:
            self._check_request(prompt_tokens, params)
            if params.grammar is not None and not grammar_checked:
                self.check_grammar(params.grammar)
        if self._closed:
            raise ShuttingDownError(f"the model {self.path.name} is being unloaded")
        admitted = 0
        try:
            for _ in requests:
                self._admit_request()
                admitted += 1
        except ServerBusyError:  # all or none
            for _ in range(admitted):
                self._release()
            raise
        loop = asyncio.get_running_loop()
        generations = []
        for prompt_tokens, params in requests:
            generation = Generation(loop, prompt_tokens, params)
            generation._on_settled = self._release
            if self.observer is not None:
                try:
                    self.observer(generation)
                except Exception:  # logs and metrics must not cost the request
                    log.exception("the generation observer failed")
            generations.append(generation)
        self._jobs.put(generations[0] if len(generations) == 1 else tuple(generations))
        return generations

    def close(self) -> None:
        super().close()
        drafters, self._drafters = list(self._drafters.values()), {}
        for drafter in drafters:
            drafter.close()

    def _check_request(self, prompt_tokens: list[int], params: SamplingParams) -> None:
        if params.draft_model is not None and params.draft_model not in self._drafters:
            raise InvalidParameterError(
                f"the draft model {params.draft_model} is not loaded for {self.path.name}",
                param="draft_model",
            )
        if not prompt_tokens:
            raise InvalidParameterError("the prompt is empty", param="prompt")
        room = self.n_ctx_per_seq - len(prompt_tokens)
        if room < 1:
            raise ContextOverflowError(
                f"the prompt has {len(prompt_tokens)} tokens but the context holds"
                f" {self.n_ctx_per_seq}; load the model with a larger context length",
                param="context_length",
            )

    # --- worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        # Closing stops at the next step: a running sequence ends with ShuttingDownError.
        while not self._closed and self._admit():
            self._step()
            self._flush()
        self._shut_down()

    def _recover(self, err: LmsError) -> None:
        """The loop raised outside any one sequence: fail the running ones (their cells are
        cleared); the queued ones are served when the supervisor restarts the loop."""
        for seq in self._active():
            self._fail(seq, err)
        self._slots = [None] * len(self._slots)
        self.status = "idle"
        self._flush()

    def _emit(self, generation: Generation, item: Item) -> None:
        self._outbox.append((generation, item))

    def _flush(self) -> None:
        if self._outbox:
            post(self._outbox)
            self._outbox = []

    def _shut_down(self) -> None:
        gone = ShuttingDownError(f"the model {self.path.name} was unloaded")
        for seq in self._active():
            self._fail(seq, gone)
        self._drain_queue("error", gone)
        self._flush()

    def _active(self) -> list[Running]:
        return [s for s in self._slots if s is not None]

    def _admit(self) -> bool:
        """Fill free slots from the queue; block when there is nothing to do. False = stop."""
        while None in self._slots:
            idle = not self._active()
            if idle:
                self._flush()  # never sit on results while waiting for work
            if self._held:
                job = self._held.popleft()
            else:
                try:
                    job = self._jobs.get(block=idle)
                except queue.Empty:
                    return True
                if job is STOP:
                    return False
                if isinstance(job, tuple):  # submit_many: admitted together, as slots allow
                    self._held.extend(job)
                    continue
            if job.is_cancelled:
                self._emit(job, GenerationResult("cancelled", len(job.prompt_tokens), 0, 0.0, 0.0))
                continue
            free = [i for i, seq in enumerate(self._slots) if seq is None]
            slot: int | None = None
            try:
                # Without cache_prompt, no prefix counts: an empty or least recently used slot
                # is taken, and the slots holding useful cells keep them.
                wanted = job.prompt_tokens if job.params.cache_prompt else []
                slot, reuse = self._cache.choose(free, wanted, job.scope)
                reuse = self._keep_prefix(slot, reuse)
                self._slots[slot] = self._start_sequence(job, slot, reuse)
            except Exception as exc:  # fails this request only (grammar init, ...)
                if slot is not None:
                    self._slots[slot] = None
                    self._clear_slot(slot)
                err = internal_error(exc, "starting a generation")
                self._emit(job, GenerationResult("error", len(job.prompt_tokens), 0, 0.0, 0.0, err))
        return True

    def _clear_slot(self, slot: int) -> None:
        """Forget what ``slot``'s cells hold and remove them (after an error)."""
        self._cache.forget(slot)
        with contextlib.suppress(Exception):
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, slot, -1, -1)

    def _drain_queue(self, reason: FinishReason, err: LmsError | None) -> None:
        waiting = list(self._held)
        self._held.clear()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            waiting.extend(job if isinstance(job, tuple) else [job])
        for job in waiting:
            if isinstance(job, Generation):
                self._emit(job, GenerationResult(reason, len(job.prompt_tokens), 0, 0.0, 0.0, err))

    def _keep_prefix(self, slot: int, reuse: int) -> int:
        """Clear ``slot``'s cells from position ``reuse`` on; returns how many leading positions
        it still holds (``reuse``, or 0 when the rest cannot be trusted and was cleared too)."""
        memory = self._ctx.memory
        # Positions 0..reuse-1 must all still be there: a sliding-window cache may have dropped
        # its oldest cells, and the next tokens would attend to holes.
        if (
            reuse > 0
            and llama_cpp.llama_memory_seq_rm(memory, slot, reuse, -1)
            and llama_cpp.llama_memory_seq_pos_min(memory, slot) == 0
            and llama_cpp.llama_memory_seq_pos_max(memory, slot) == reuse - 1
        ):
            return reuse
        llama_cpp.llama_memory_seq_rm(memory, slot, -1, -1)
        return 0

    def _start_sequence(self, generation: Generation, slot: int, reuse: int) -> Running:
        params = generation.params
        # A copy: attach_draft may add a key from another thread meanwhile.
        for drafter in tuple(self._drafters.values()):  # cells of this scope's prefix only
            drafter.forget(slot, reuse)
        room = self.n_ctx_per_seq - len(generation.prompt_tokens)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        return Running(
            generation=generation,
            slot=slot,
            max_tokens=max_tokens,
            stops=StopMatcher(params.stop),
            sampler=self._chooser.chain(params),
            decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
            grammar=None
            if params.grammar is None
            else self._chooser.grammar_sampler(params.grammar),
            reused=reuse,
            prefilled=reuse,
            n_past=reuse,
            guessing=Guessing() if self._speculates(params) else None,
        )

    def _step(self) -> None:
        batch = self._batch
        batch.n_tokens = 0
        rows: list[tuple[Running, int]] = []
        for seq in self._active():
            if seq.generation.is_cancelled:
                self._end(seq, "cancelled")
        # Generating sequences first (one token each, plus any guesses to verify), then prompt
        # chunks in what is left.
        generating = [s for s in self._active() if not s.in_prefill]
        guesses = self._guesses(generating, prefill=len(generating) < len(self._active()))
        for seq in generating:
            rows.append((seq, self._add(seq.last_token, seq, logits=True)))
            for token in guesses.get(seq.slot, ()):
                self._add(token, seq, logits=True)
        prefilling: list[Running] = []
        for seq in [s for s in self._active() if s.in_prefill]:
            prefilling.append(seq)
            prompt = seq.generation.prompt_tokens
            room = self.options.batch_size - batch.n_tokens
            end = min(len(prompt), seq.prefilled + room)
            for i in range(seq.prefilled, end):
                index = self._add(prompt[i], seq, logits=i == len(prompt) - 1)
            if end == len(prompt):
                rows.append((seq, index))
            seq.prefilled = end
            if batch.n_tokens >= self.options.batch_size:
                break
        if batch.n_tokens == 0:
            return
        self.status = "processing_prompt" if prefilling else "generating"
        started = time.perf_counter()
        rc = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if not prefilling and rc == 0:
            self._costs.record(batch.n_tokens, (time.perf_counter() - started) * 1000)
        if rc != 0:
            err = InternalError(f"llama_decode failed (code {rc})")
            for seq in self._active():
                self._fail(seq, err)
            return
        for seq in prefilling:
            fraction = seq.prefilled / len(seq.generation.prompt_tokens)
            self._emit(seq.generation, PromptProgress(fraction))
        for seq, index in rows:
            try:  # whatever one sequence raises (sampling, grammar, decoding) ends it alone
                guess = guesses.get(seq.slot)
                if guess:
                    self._verify(seq, index, guess)
                else:
                    token = self._sample(seq, index)
                    if seq.guessing is not None:
                        seq.guessing.observed(token)
                    self._advance(seq, token)
            except Exception as exc:
                self._fail(seq, internal_error(exc, "generating a token"))
        if not self._active():
            self.status = "idle"

    def _add(self, token: int, seq: Running, *, logits: bool) -> int:
        batch = self._batch
        i = batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = seq.n_past
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq.slot
        batch.logits[i] = logits
        batch.n_tokens = i + 1
        seq.n_past += 1
        return i

    def _sample(self, seq: Running, index: int) -> int:
        if seq.grammar is not None:
            return self._chooser.pick(
                self._logits(index), seq.generation.params, seq.sampler, seq.grammar
            )
        if seq.sampler is None:
            return int(self._logits(index).argmax())
        return int(seq.sampler.sample(self._ctx, index))

    def _logits(self, index: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        row = llama_cpp.llama_get_logits_ith(self._ctx.ctx, index)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,))

    def _advance(self, seq: Running, token: int) -> None:
        now = time.perf_counter()
        if seq.first_token_at is None:
            seq.first_token_at = now
        seq.output.append(token)
        if self.vocab.is_end_of_generation(token):
            self._end(seq, "stop")
            return
        seq.generated += 1
        seq.last_token = token
        text = seq.stops.feed(seq.decoder.decode(self.vocab.piece(token)))
        if text:
            self._emit(seq.generation, text)
        if seq.stops.stopped:
            self._end(seq, "stop")
        elif seq.generated >= seq.max_tokens:
            self._end(seq, "length")

    def _end(self, seq: Running, reason: FinishReason) -> None:
        """Finish ``seq`` without an error; if finishing raises, it fails instead."""
        try:
            self._finish(seq, reason, None)
        except Exception as exc:
            self._fail(seq, internal_error(exc, "finishing a generation"))

    def _fail(self, seq: Running, err: LmsError) -> None:
        """End ``seq`` with ``err`` (once: a sequence no longer in its slot is left alone); the
        slot is freed and its cells cleared even when the orderly path raises."""
        if self._slots[seq.slot] is not seq:
            return
        try:
            self._finish(seq, "error", err)
            return
        except Exception:
            log.exception("ending a failed generation failed")
        self._slots[seq.slot] = None
        self._clear_slot(seq.slot)
        if not self._active():
            self.status = "idle"
        self._emit(
            seq.generation,
            GenerationResult(
                "error", len(seq.generation.prompt_tokens), seq.generated, 0.0, 0.0, err
            ),
        )

    def _finish(self, seq: Running, reason: FinishReason, err: LmsError | None) -> None:
        if reason in ("stop", "length"):
            tail = seq.stops.feed(seq.decoder.decode(b"", final=True)) + seq.stops.flush()
            if tail:
                self._emit(seq.generation, tail)
        now = time.perf_counter()
        first = seq.first_token_at or now
        # Free the slot before telling the caller: whoever reads the result may submit again at
        # once and must find the slot free. Its KV cells stay for a later prompt that shares
        # their prefix (cleared past that prefix before it runs); after an error they are
        # cleared now, as nothing says what they hold.
        if reason == "error":
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.slot, -1, -1)
            self._cache.forget(seq.slot)
        else:
            decoded = (seq.generation.prompt_tokens + seq.output)[: seq.n_past]
            self._cache.keep(seq.slot, decoded, seq.generation.scope)
        if seq.sampler is not None:
            seq.sampler.close()
        if seq.grammar is not None:
            llama_cpp.llama_sampler_free(seq.grammar)
        self._slots[seq.slot] = None
        if not self._active():
            self.status = "idle"
        self._emit(
            seq.generation,
            GenerationResult(
                finish_reason=reason,
                prompt_tokens=len(seq.generation.prompt_tokens),
                completion_tokens=seq.generated,
                time_to_first_token=first - seq.generation.submitted_at,
                generation_seconds=now - first,
                error=err,
                cached_tokens=seq.reused,
                draft=draft_stats(seq),
            ),
        )
