"""The embedding engine: a GGUF model loaded for embeddings, with its own worker thread.

Any GGUF can be loaded this way (README: Model keys). An input's embedding is the **mean** of the
final hidden states (after the output norm) of its tokens, **L2-normalised** to length 1 — what
OpenAI's embeddings are and what clients assume when they take a dot product as the cosine
similarity (llama.cpp's own server normalises the same way by default).

How it is computed, per batch of inputs:

* the context has ``embeddings`` on with llama.cpp's pooling set to NONE, so every token is an
  output and ``llama_get_embeddings`` holds one hidden state per token; we pool them ourselves.
  That lets a long input of a causal (decoder) model run through several small ``llama_decode``
  calls (its earlier tokens stay in the KV cache), where llama.cpp's own pooling needs the whole
  input in one micro-batch;
* a decoder LLM's graph ends with the LM head (``n_vocab`` logits per token: 262k for Gemma 3,
  more work than the rest of the model). An eval callback stops the graph right after the hidden
  states (the node ``result_embd_pooled``), so the head is never computed. If a llama.cpp build
  lacks the node or ``ggml_get_name``, the whole graph runs: slower, same vectors;
* several inputs share one batch (one sequence id each, one unified KV cache) as long as their
  tokens fit the context; the worker also merges requests that queue up meanwhile.

Determinism: the same request gives bitwise the same vectors. The same input in batches of
another shape agrees to a cosine of 0.999 or more, not bit for bit: llama.cpp's CPU matrix
kernels round differently depending on how many rows a product holds.

Encoder-only models (catalog type ``embedding``: BERT family) get a micro-batch as large as their
context, because a non-causal sequence cannot be split across ``llama_decode`` calls.

Blocking llama.cpp calls run on the worker thread only; callers await :meth:`Embedder.embed`.

A request that raises anything fails alone; the thread keeps serving (:mod:`.worker`). Work
stops between groups (one ``n_ctx``-sized set of sequences): a request whose caller went away
(``embed`` cancelled: the client disconnected) contributes no further group, and closing the
embedder fails what is left after the current group instead of finishing a 2,048-input batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    ShuttingDownError,
)
from lms.inference.generation import LoadOptions
from lms.inference.vocab import Vocabulary
from lms.inference.worker import STOP, ModelWorker, internal_error, load_model

log = logging.getLogger("lms.embedder")

#: Inputs decoded together at most (sequence ids of one context).
MAX_SEQUENCES = 32
#: Tokens per ``llama_decode`` for a decoder model. The logits buffer llama.cpp reserves grows
#: with it (n_vocab floats per token, 1 MiB per token for Gemma 3), so it stays small.
DECODER_BATCH = 256
#: The graph node holding the per-token hidden states when pooling is NONE.
_HIDDEN_NODE = b"result_embd_pooled"

Vector = np.ndarray[Any, np.dtype[np.float32]]
EmbeddingInput = str | list[int]


@dataclass
class Embeddings:
    """Unit-length vectors, one per input in input order, and the tokens each input used."""

    vectors: list[Vector]
    token_counts: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass
class _Job:
    inputs: Sequence[EmbeddingInput]
    future: asyncio.Future[Embeddings]
    loop: asyncio.AbstractEventLoop
    submitted_at: float = field(default_factory=time.perf_counter)
    tokens: list[list[int]] = field(default_factory=list)
    cancelled: bool = False
    settled: bool = False  # the worker handed over a result or an error
    vectors: list[Vector | None] = field(default_factory=list)
    missing: int = 0  # vectors still to compute

    def settle(self, result: Embeddings | LmsError) -> None:
        if self.settled:
            return
        self.settled = True

        def deliver() -> None:
            if self.future.done():
                return
            if isinstance(result, Embeddings):
                self.future.set_result(result)
            else:
                self.future.set_exception(result)

        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            self.loop.call_soon_threadsafe(deliver)


def _ggml_get_name() -> Callable[[ctypes.c_void_p], bytes | None] | None:
    """``ggml_get_name`` from the ggml library llama_cpp loaded, or None when not found."""
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for candidate in sorted(lib_dir.glob("*ggml-base*")):
        try:
            lib = ctypes.CDLL(str(candidate))
            function = lib.ggml_get_name
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_void_p]
        function.restype = ctypes.c_char_p
        return function
    log.warning("ggml_get_name not found: embeddings will compute the LM head too (slower)")
    return None


class _HeadSkipper:
    """An eval callback that stops the graph once the per-token hidden states are computed."""

    def __init__(self) -> None:
        self.get_name = _ggml_get_name()
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    def _on_node(self, tensor: ctypes.c_void_p, ask: bool, user_data: ctypes.c_void_p) -> bool:
        if ask:  # "do you want this node's data?" — only the hidden states
            return self.get_name is not None and self.get_name(tensor) == _HIDDEN_NODE
        return False  # got it: stop computing the rest of the graph (the LM head)


class Embedder(ModelWorker):
    """A model loaded in embedding mode, with its context and worker thread.

    Build it with :meth:`load`; call :meth:`embed` from the event loop; :meth:`close` frees it.
    """

    def __init__(
        self,
        path: Path,
        options: LoadOptions,
        model: internals.LlamaModel,
        ctx: internals.LlamaContext,
        skipper: _HeadSkipper | None,
    ) -> None:
        self.path = path
        self.options = options
        self._model = model
        self._ctx = ctx
        self._skipper = skipper  # keeps the ctypes callback alive as long as the context
        self.vocab = Vocabulary(model)
        self.n_vocab = self.vocab.n_tokens
        self.n_embd = int(llama_cpp.llama_model_n_embd(model.model))
        # llama.cpp rounds a small context up (to 256): hold inputs to what was asked for
        self.n_ctx = min(ctx.n_ctx(), options.context_length)
        self._memory = llama_cpp.llama_get_memory(ctx.ctx)
        self._batch = llama_cpp.llama_batch_init(options.batch_size, 0, MAX_SEQUENCES)
        self._active = 0
        self._serving: list[_Job] = []
        #: Groups of sequences decoded so far (each one ``_embed_group`` call).
        self.groups_embedded = 0
        self.status: Literal["idle", "computing_embedding"] = "idle"
        # One request is computed at a time (merged with whatever queued up meanwhile).
        self._start_worker(f"embedder:{path.name}", slots=1, queue_length=options.queue_length)

    @classmethod
    def load(
        cls,
        path: Path,
        options: LoadOptions,
        *,
        encoder: bool = False,
        progress: Callable[[float], None] | None = None,
    ) -> Embedder:
        """Load the model file for embeddings (blocking: call it off the event loop).

        ``encoder`` is for encoder-only models (non-causal attention): their micro-batch must
        hold a whole input, so it is as large as the context.
        """
        model = load_model(path, progress)
        batch = options.context_length if encoder else min(DECODER_BATCH, options.context_length)
        options = LoadOptions(
            context_length=options.context_length,
            parallel=1,
            batch_size=batch,
            flash_attention=options.flash_attention,
            threads=options.threads,
            queue_length=options.queue_length,
        )
        skipper = None if encoder else _HeadSkipper()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = options.context_length
        params.n_batch = params.n_ubatch = batch
        params.n_seq_max = MAX_SEQUENCES
        params.kv_unified = True  # the batch's inputs share the whole context
        params.embeddings = True
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE  # we pool (see the docstring)
        params.n_threads = params.n_threads_batch = options.threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        params.no_perf = True
        if skipper is not None and skipper.get_name is not None:
            params.cb_eval = skipper.callback
        try:
            ctx = internals.LlamaContext(model=model, params=params, verbose=False)
        except ValueError as exc:
            model.close()
            raise ModelLoadError(
                f"cannot create an embedding context of {options.context_length} tokens for"
                f" {path.name} (out of memory?)"
            ) from exc
        return cls(path, options, model, ctx, skipper)

    # --- called from the event loop ---------------------------------------------------------

    @property
    def active(self) -> int:
        return self._active

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    async def embed(self, inputs: Sequence[EmbeddingInput]) -> Embeddings:
        """Embed texts (or token arrays); one unit vector per input, in order.

        Raises ContextOverflowError (400) for an input longer than the context, and
        InvalidParameterError for an empty input, a lone surrogate or a token id outside the
        vocabulary; all name the input (``input[i]``). ServerBusyError (503, ``Retry-After``)
        when one request is being computed and ``queue_length`` more wait. Cancelling the call
        (the client left) stops the work at the next group.
        """
        if not inputs:
            raise InvalidParameterError("'input' must not be empty", param="input")
        if self._closed:
            raise ShuttingDownError(f"the model {self.path.name} is being unloaded")
        self._admit_request()
        try:
            loop = asyncio.get_running_loop()
            job = _Job(inputs, loop.create_future(), loop)
            self._jobs.put(job)
            try:
                return await job.future
            finally:
                job.cancelled = True  # a client that left: no further group of it is computed
        finally:
            self._release()

    # --- worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            jobs: list[_Job] = []
            item = self._jobs.get()
            while True:
                if item is STOP:
                    stopping = True
                    break
                if not item.cancelled:
                    jobs.append(item)
                if sum(len(j.inputs) for j in jobs) >= MAX_SEQUENCES:
                    break
                try:
                    item = self._jobs.get_nowait()  # merge what queued up meanwhile
                except queue.Empty:
                    break
            if jobs and not stopping:
                self._serving = jobs
                self._serve(jobs)
                self._serving = []
            elif jobs:
                self._fail(jobs, ShuttingDownError(f"the model {self.path.name} was unloaded"))
        gone = ShuttingDownError(f"the model {self.path.name} was unloaded")
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Job):
                item.settle(gone)

    def _recover(self, err: LmsError) -> None:
        self._fail(self._serving, err)
        self._serving = []
        self._active = 0
        self.status = "idle"

    def _fail(self, jobs: list[_Job], err: LmsError) -> None:
        for job in jobs:
            self._settle(job, err)

    def _settle(self, job: _Job, result: Embeddings | LmsError) -> None:
        # the counters first: whoever gets the result may look at them at once
        if not job.settled and self._active > 0:
            self._active -= 1
            if self._active == 0:
                self.status = "idle"
        job.settle(result)

    def _serve(self, jobs: list[_Job]) -> None:
        ready: list[_Job] = []
        for job in jobs:
            try:
                job.tokens = [self._checked_tokens(i, item) for i, item in enumerate(job.inputs)]
            except Exception as exc:  # fails this request only
                job.settle(internal_error(exc, "tokenizing an embedding input"))
                continue
            job.vectors = [None] * len(job.tokens)
            job.missing = len(job.tokens)
            ready.append(job)
        if not ready:
            return
        self._active = len(ready)
        self.status = "computing_embedding"
        try:
            self._embed_all(ready)
        finally:
            self._active = 0
            self.status = "idle"

    def _tokenize(self, text: str, where: str = "text") -> list[int]:
        return self.vocab.tokenize_input(text, where)

    def _checked_tokens(self, index: int, item: EmbeddingInput) -> list[int]:
        where = f"input[{index}]"
        if isinstance(item, str):
            if not item:
                raise InvalidParameterError(f"'{where}' is an empty string", param="input")
            tokens = self._tokenize(item, where)
        else:
            bad = next((t for t in item if not 0 <= t < self.n_vocab), None)
            if bad is not None:
                raise InvalidParameterError(
                    f"'{where}' holds the token id {bad}, outside the vocabulary"
                    f" (0..{self.n_vocab - 1})",
                    param="input",
                )
            tokens = list(item)
        if not tokens:
            raise InvalidParameterError(f"'{where}' is empty", param="input")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(
                f"'{where}' has {len(tokens)} tokens but the embedding context holds"
                f" {self.n_ctx}; shorten it, or load the model with a larger context"
                " (lms load MODEL --embedding --context-length N)",
                param="input",
            )
        return tokens

    def _embed_all(self, jobs: list[_Job]) -> None:
        """Compute the jobs' vectors group by group, settling each job as soon as its last
        vector is in. Before each group: stop if the embedder is closing, and leave out the
        sequences of jobs that were cancelled or failed."""
        pending = [(job, i) for job in jobs for i in range(len(job.tokens))]
        pos = 0
        while True:
            if self._closed:
                gone = ShuttingDownError(f"the model {self.path.name} was unloaded")
                self._fail([job for job in jobs if not job.settled], gone)
                return
            group: list[tuple[_Job, int]] = []
            used = 0
            while pos < len(pending):
                job, i = pending[pos]
                if job.cancelled or job.settled:
                    pos += 1
                    continue
                size = len(job.tokens[i])
                if group and (used + size > self.n_ctx or len(group) == MAX_SEQUENCES):
                    break
                group.append((job, i))
                used += size
                pos += 1
            if not group:
                return
            try:
                vectors = self._embed_group([job.tokens[i] for job, i in group])
            except Exception as exc:  # the jobs of this group fail; the others go on
                self._fail(
                    list({id(j): j for j, _ in group}.values()), internal_error(exc, "embedding")
                )
                continue
            finally:
                self.groups_embedded += 1  # computed or failed
            for (job, i), vector in zip(group, vectors, strict=True):
                job.vectors[i] = vector
                job.missing -= 1
                if job.missing == 0:
                    self._settle(
                        job,
                        Embeddings(
                            [v for v in job.vectors if v is not None],
                            [len(t) for t in job.tokens],
                        ),
                    )

    def _embed_group(self, group: list[list[int]]) -> list[Vector]:
        """Mean hidden state of each sequence of ``group`` (their tokens fit the context)."""
        llama_cpp.llama_memory_clear(self._memory, True)
        sums = np.zeros((len(group), self.n_embd), dtype=np.float64)
        flat = [
            (seq, pos, token)
            for seq, tokens in enumerate(group)
            for pos, token in enumerate(tokens)
        ]
        size = self.options.batch_size
        batch = self._batch
        for start in range(0, len(flat), size):
            chunk = flat[start : start + size]
            batch.n_tokens = len(chunk)
            for i, (seq, pos, token) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = True
            rc = llama_cpp.llama_decode(self._ctx.ctx, batch)
            if rc != 0:
                raise InternalError(f"llama_decode failed (code {rc}) while embedding")
            hidden = self._hidden_states(len(chunk))
            owners = np.fromiter((seq for seq, _, _ in chunk), dtype=np.int64, count=len(chunk))
            # a chunk holds each sequence's tokens contiguously: sum each run in one call
            starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
            sums[owners[starts]] += np.add.reduceat(hidden.astype(np.float64), starts, axis=0)
        llama_cpp.llama_memory_clear(self._memory, True)
        lengths = np.array([len(tokens) for tokens in group], dtype=np.float64)[:, None]
        means = sums / lengths
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        unit = (means / np.where(norms == 0.0, 1.0, norms)).astype(np.float32)
        return list(unit)

    def _hidden_states(self, n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The ``n`` outputs' hidden states of the last decode, in batch order."""
        first = llama_cpp.llama_get_embeddings_ith(self._ctx.ctx, 0)
        last = llama_cpp.llama_get_embeddings_ith(self._ctx.ctx, n - 1)
        step = self.n_embd * ctypes.sizeof(ctypes.c_float)
        if not first or not last:
            raise InternalError("llama.cpp returned no embeddings")
        base = ctypes.cast(first, ctypes.c_void_p).value or 0
        end = ctypes.cast(last, ctypes.c_void_p).value or 0
        if end - base == (n - 1) * step:  # contiguous, in order: one view of the block
            return np.ctypeslib.as_array(first, shape=(n, self.n_embd))
        rows = [llama_cpp.llama_get_embeddings_ith(self._ctx.ctx, i) for i in range(n)]
        return np.stack([np.ctypeslib.as_array(r, shape=(self.n_embd,)) for r in rows])
