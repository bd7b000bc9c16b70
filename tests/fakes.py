"""A scripted fake engine for plumbing tests (HTTP shapes, SSE framing, errors, auth, SDK wire).

A test says what the model will answer (:meth:`Script.say`), and the routes, the SDK and the
manager under test run their real code: :class:`FakeEngine` is an :class:`Engine` whose worker
thread plays the script instead of running llama.cpp. It keeps the real engine's public side:
``submit`` / ``submit_many`` with the real request checks and queue bound (``ServerBusyError``),
:class:`Generation` handles fed by the real :func:`post`, cancellation, ``close`` failing what is
left with ``ShuttingDownError``, the observer hook. Tokens are UTF-8 bytes (token = byte + 2,
BOS = 1), so counts are easy to predict: ``"hi"`` is ``[1, 106, 107]``.

:class:`FakeLoader` goes into ``ModelManager(loader=...)``: every instance the manager loads
(explicitly or just in time) is a FakeEngine playing the loader's one shared script. The models
folder still holds a real (tiny) GGUF file: discovery and model keys stay the real ones.

Embedding mode loads a :class:`FakeEmbedder`: an :class:`Embedder` with the real request
checks, group loop, queue bound, cancellation between groups and ``close``, whose one group step
gives each input a deterministic unit vector of :data:`FAKE_WIDTH` floats derived from its
tokens (equal inputs, equal vectors) instead of running a model.

Inference itself (what gemma answers, its vectors, batching, grammars, the prompt cache) is never
tested here: those tests use the real model and carry the ``model`` marker.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from lms.errors import (
    InvalidParameterError,
    LmsError,
    ShuttingDownError,
)
from lms.inference.catalog import ModelFile
from lms.inference.embedder import Embedder, Vector, _Job
from lms.inference.engine import Engine
from lms.inference.generation import (
    DraftStats,
    FinishReason,
    Generation,
    GenerationResult,
    Item,
    LoadOptions,
    PromptProgress,
    post,
)
from lms.inference.sampling import SamplingParams, StopMatcher
from lms.inference.worker import STOP, internal_error

BOS = 1
_BYTE_BASE = 2


@dataclass
class Reply:
    """What the fake model answers to one request.

    ``pieces`` are streamed one per token; ``max_tokens`` and stop strings cut them as the real
    engine would (finish ``length`` / ``stop``). After the last piece the generation ends with
    ``finish``, or fails with ``error`` when set (an LmsError as it is, anything else as a 500).
    ``gate``: the worker waits, after ``gate_after`` pieces, until the test sets the event (or
    the request is cancelled, or the engine closes): a generation held open without timing.
    """

    #: By default a long answer, as a real model's usually is: ``max_tokens`` ends it.
    pieces: Sequence[str] = ("Hello", " from", " the", " fake", " model.") * 20
    finish: FinishReason = "stop"
    error: BaseException | None = None
    gate: threading.Event | None = None
    gate_after: int = 0
    cached_tokens: int = 0
    #: The result's ``draft`` (what speculative decoding did), as given.
    draft: DraftStats | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class Script:
    """Replies in the order requests reach a worker; when empty, ``default`` (None: fail the
    request with a 500 saying nothing was scripted)."""

    default: Reply | None = field(default_factory=Reply)
    _replies: collections.deque[Reply] = field(default_factory=collections.deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Prompt tokens of every request played, in order (for assertions on what was asked).
    prompts: list[list[int]] = field(default_factory=list)
    #: Sampling parameters of every request played, in order (what reached the engine).
    params: list[SamplingParams] = field(default_factory=list)

    def say(self, *replies: Reply | str) -> None:
        """Queue replies (a str is one reply of that one piece)."""
        with self._lock:
            self._replies.extend(Reply((r,)) if isinstance(r, str) else r for r in replies)

    def next(self, prompt: list[int]) -> Reply | None:
        with self._lock:
            self.prompts.append(prompt)
            return self._replies.popleft() if self._replies else self.default


def fake_tokenize(text: str, where: str = "the prompt", param: str | None = None) -> list[int]:
    """BOS, then one token per UTF-8 byte (token = byte + 2). A lone surrogate is refused as the
    real vocabulary refuses it: a 400 saying ``where`` it was (and naming ``param``)."""
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameterError(
            f"{where} holds a lone surrogate (\\ud800-\\udfff): not valid Unicode text",
            param=param,
        ) from None
    return [BOS, *(b + _BYTE_BASE for b in encoded)]


class FakeEngine(Engine):
    """An :class:`Engine` that plays a :class:`Script` (one generation at a time) instead of
    running a model. Never loads llama.cpp."""

    def __init__(
        self,
        path: Path = Path("fake.gguf"),
        options: LoadOptions | None = None,
        script: Script | None = None,
    ) -> None:
        # Engine.__init__ builds a llama context: none here, only what the public side uses.
        self.path = path
        self.options = options or LoadOptions(context_length=512)
        self.script = script or Script()
        self.n_vocab = 256 + _BYTE_BASE
        self.n_ctx = self.options.context_length * self.options.parallel
        self.n_ctx_per_seq = self.options.context_length
        self.observer: Callable[[Generation], None] | None = None
        self.status = "idle"
        self._held = collections.deque()
        self._outbox = []
        self._playing: Generation | None = None
        self._drafters = {}
        #: Keys and files of the draft models attached, in order (the fake guesses nothing).
        self.attached: list[tuple[str, Path]] = []
        self._start_worker(
            f"engine:{path.name}",
            slots=self.options.parallel,
            queue_length=self.options.queue_length,
        )

    # --- the public side ---------------------------------------------------------------------

    @property
    def active(self) -> int:
        return 0 if self._playing is None else 1

    def say(self, *replies: Reply | str) -> None:
        """Queue replies on this engine's script (see :meth:`Script.say`)."""
        self.script.say(*replies)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return fake_tokenize(text)

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        data = bytes(t - _BYTE_BASE for t in tokens if _BYTE_BASE <= t < 256 + _BYTE_BASE)
        prefix = "<bos>" if special and tokens[:1] == [BOS] else ""
        return prefix + data.decode("utf-8", "replace")

    def check_grammar(self, grammar: str) -> None:
        """Grammars are not checked: the fake has no vocabulary to compile them against."""

    def attach_draft(self, key: str, path: Path) -> None:
        """Records the draft model; a file whose name holds ``other-vocab`` is refused as a
        real engine refuses a model with another vocabulary."""
        if "other-vocab" in path.name:
            raise InvalidParameterError(
                f"the draft model {key} has another vocabulary", param="draft_model"
            )
        self.attached.append((key, path))
        self._drafters[key] = cast(Any, path)  # only its presence counts (Engine._check_request)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(STOP)
        self._thread.join()

    # --- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._held.popleft() if self._held else self._jobs.get()
            if job is STOP:
                self._shut_down()
                return
            if isinstance(job, tuple):
                self._held.extend(job)
                continue
            if self._closed:
                self._send(job, self._result(job, "error", 0, ShuttingDownError("unloaded")))
                continue
            self._play(job)

    def _recover(self, err: LmsError) -> None:
        if self._playing is not None:
            self._send(self._playing, self._result(self._playing, "error", 0, err))
        self._playing = None
        self.status = "idle"

    def _shut_down(self) -> None:
        gone = ShuttingDownError(f"the model {self.path.name} was unloaded")
        self._drain_queue("error", gone)
        self._flush()

    def _play(self, generation: Generation) -> None:
        if generation.is_cancelled:
            self._send(generation, self._result(generation, "cancelled", 0))
            return
        reply = self.script.next(generation.prompt_tokens)
        self.script.params.append(generation.params)
        self._playing = generation
        self.status = "processing_prompt"
        self._send(generation, PromptProgress(1.0))
        self.status = "generating"
        stops = StopMatcher(generation.params.stop)
        limit = generation.params.max_tokens
        generated = 0
        reason: FinishReason | None = None
        error: LmsError | None = None
        if reply is None:
            reason, error = "error", internal_error(RuntimeError("no reply"), "the fake model")
        else:
            for index, piece in enumerate([*reply.pieces, None]):
                if reply.gate is not None and index == reply.gate_after:
                    self._wait(reply.gate, generation)
                if self._closed:
                    reason, error = "error", ShuttingDownError("the model was unloaded")
                    break
                if generation.is_cancelled:
                    reason = "cancelled"
                    break
                if piece is None:
                    break
                if limit is not None and generated >= limit:
                    reason = "length"
                    break
                generated += 1
                text = stops.feed(piece)
                if text:
                    self._send(generation, text)
                if stops.stopped:
                    reason = "stop"
                    break
            if reason is None and reply.error is not None:
                reason, error = "error", internal_error(reply.error, "the fake model")
            if reason is None:
                reason = reply.finish
        if reason in ("stop", "length"):
            tail = stops.flush()
            if tail:
                self._send(generation, tail)
        cached = reply.cached_tokens if reply is not None else 0
        self._playing = None
        self.status = "idle"
        result = self._result(generation, reason, generated, error, cached)
        result.draft = reply.draft if reply is not None else None
        self._send(generation, result)

    def _wait(self, gate: threading.Event, generation: Generation) -> None:
        # Polled so that a cancel or a close also ends the wait; no test waits on this timing.
        while not gate.wait(0.02):
            if self._closed or generation.is_cancelled:
                return

    def _result(
        self,
        generation: Generation,
        reason: FinishReason,
        generated: int,
        error: LmsError | None = None,
        cached: int = 0,
    ) -> GenerationResult:
        elapsed = time.perf_counter() - generation.submitted_at
        return GenerationResult(
            reason, len(generation.prompt_tokens), generated, elapsed, 0.0, error, cached
        )

    def _send(self, generation: Generation, item: Item) -> None:
        post([(generation, item)])

    def _emit(self, generation: Generation, item: Item) -> None:  # used by _drain_queue
        post([(generation, item)])


#: Floats in a fake embedding (small; not any real model's width).
FAKE_WIDTH = 16


def fake_vector(tokens: Sequence[int]) -> Vector:
    """A unit vector of :data:`FAKE_WIDTH` floats determined by ``tokens`` alone: seeded by a
    hash of them, so equal token lists give bitwise equal vectors and different ones differ."""
    digest = hashlib.sha256(np.asarray(tokens, dtype="<i8").tobytes()).digest()
    values = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(FAKE_WIDTH)
    unit: Vector = (values / np.linalg.norm(values)).astype(np.float32)
    return unit


class FakeEmbedder(Embedder):
    """An :class:`Embedder` that never loads llama.cpp. Everything but the model is the real
    embedder's: ``embed`` (input checks, the queue bound), the worker loop (merging requests,
    groups of at most ``n_ctx`` tokens and ``MAX_SEQUENCES`` inputs, cancellation between
    groups, ``groups_embedded``, shutdown); only :meth:`_embed_group` is played (see
    :func:`fake_vector`) and tokens are :func:`fake_tokenize`'s."""

    def __init__(self, path: Path = Path("fake.gguf"), options: LoadOptions | None = None) -> None:
        # Embedder.__init__ builds a llama context: none here, only what the public side and
        # the worker loop use.
        self.path = path
        self.options = options or LoadOptions(context_length=512)
        self.n_vocab = 256 + _BYTE_BASE
        self.n_embd = FAKE_WIDTH
        self.n_ctx = self.options.context_length
        self._active = 0
        self._serving: list[_Job] = []
        self.groups_embedded = 0
        self.status = "idle"
        self._start_worker(f"embedder:{path.name}", slots=1, queue_length=self.options.queue_length)

    def _tokenize(self, text: str, where: str = "text") -> list[int]:
        return fake_tokenize(text, f"'{where}'", param="input")

    def _embed_group(self, group: list[list[int]]) -> list[Vector]:
        return [fake_vector(tokens) for tokens in group]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(STOP)
        self._thread.join()


class FakeLoader:
    """A ``ModelManager`` loader whose llm instances are :class:`FakeEngine` s sharing one
    :class:`Script`, and whose embedding instances are :class:`FakeEmbedder` s."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.engines: list[FakeEngine] = []
        self.embedders: list[FakeEmbedder] = []

    def say(self, *replies: Reply | str) -> None:
        self.script.say(*replies)

    def __call__(
        self,
        model: ModelFile,
        options: LoadOptions,
        embedding: bool,
        progress: Callable[[float], None] | None = None,
    ) -> Engine | Embedder:
        if progress is not None:
            progress(0.0)
            progress(1.0)
        if embedding:
            embedder = FakeEmbedder(model.path, options)
            self.embedders.append(embedder)
            return embedder
        engine = FakeEngine(model.path, options, self.script)
        self.engines.append(engine)
        return engine


#: Seconds a gate waits: generous, only ever reached when something is broken.
GATE_DEADLINE = 120.0


class GroupGate:
    """Wraps an embedder's ``_embed_group`` (the real one's or a :class:`FakeEmbedder`'s):
    records each group's size and holds the worker inside the first group (computed as usual)
    until the test opens ``gate``."""

    def __init__(self, embedder: Embedder) -> None:
        self.original = embedder._embed_group
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, group: list[list[int]]) -> Any:
        vectors = self.original(group)
        self.sizes.append(len(group))
        if len(self.sizes) == 1:
            self.entered.set()
            self.gate.wait(GATE_DEADLINE)
        return vectors

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, GATE_DEADLINE)


def write_gguf(
    path: Path,
    *,
    tensor_bytes: int = 1 << 20,
    name: str = "Tiny Test",
    arch: str = "llama",
    context_length: int = 256,
) -> bytes:
    """A small GGUF with a header of ``arch`` and one tensor of about ``tensor_bytes`` (enough
    for the catalog, which reads headers; llama.cpp cannot run it). Returns its bytes."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(context_length)
    count = max(16, tensor_bytes // 4)
    values = np.arange(count, dtype=np.float32).reshape(-1, 16)
    writer.add_tensor("token_embd.weight", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()
