"""What a caller holds while the engine works: load options, the generation handle, results.

Pure Python (no llama.cpp): the API layer and tests use these types without the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from lms.errors import LmsError
from lms.inference.sampling import SamplingParams

FinishReason = Literal["stop", "length", "cancelled", "error"]

#: Who is asking (the API token's id with auth on; None otherwise), set by the API layer for
#: each request. A generation only reuses KV cells that a generation of the same scope left.
cache_scope: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cache_scope", default=None
)


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded (the llama.cpp context it gets)."""

    context_length: int = 4096
    parallel: int = 1
    batch_size: int = 512
    flash_attention: bool = True
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: Requests that may wait beyond the ``parallel`` slots; one more gets 503 (docs/LIMITS.md).
    queue_length: int = 64
    #: Prompt-lookup guesses for requests that do not turn speculation off (``models.
    #: speculative``); a request naming a draft model or a guess count speculates regardless.
    speculative: bool = True


@dataclass
class DraftStats:
    """Guessed tokens of one generation, in LM Studio's terms: every guessed (drafted) token is
    accepted (the model agreed; a decode step saved), rejected (the first guess the model
    disagreed with) or ignored (guesses after a rejected one, or past the end of the output)."""

    #: The draft model's key; None for guesses looked up in the request's own text.
    model: str | None = None
    total: int = 0
    accepted: int = 0
    rejected: int = 0
    ignored: int = 0


@dataclass
class GenerationResult:
    """Counts and timings of a finished generation."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float
    generation_seconds: float
    error: LmsError | None = None
    #: Leading prompt tokens whose KV cells a previous generation left (not decoded again).
    cached_tokens: int = 0
    #: False when the counts are unknown (a remote engine that reported no usage): they are 0
    #: then, and usage records the request as one of unknown size.
    usage_known: bool = True
    #: What speculative decoding did (None: it was off for this request). See DraftStats.
    draft: DraftStats | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds else 0.0


@dataclass(frozen=True)
class PromptProgress:
    """How much of the prompt has been processed (0..1), pushed after each prefill chunk."""

    fraction: float


class Generation:
    """The caller's handle on one request: stream its text, cancel it, read its result.

    The worker thread hands text, progress and the result over with :func:`post`; iterating
    yields whatever has arrived since the last step (one piece per token when the consumer
    keeps up, joined pieces when it falls behind).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, prompt_tokens: list[int], params: SamplingParams
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.submitted_at = time.perf_counter()
        self.scope = cache_scope.get()
        self.result: GenerationResult | None = None
        #: Called on the event loop once the generation has ended (for logs and metrics).
        self.on_done: Callable[[Generation, GenerationResult], None] | None = None
        self._output: list[str] = []
        self._loop = loop
        self._queue: asyncio.Queue[str | PromptProgress | GenerationResult] = asyncio.Queue()
        self._cancelled = False
        #: Called once on the event loop when the generation stops counting against its
        #: engine's queue bound: cancelled, or its result arrived.
        self._on_settled: Callable[[], None] | None = None

    @property
    def is_cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop generating; the worker notices before its next token."""
        self._cancelled = True
        self._settle()

    def _settle(self) -> None:
        settled, self._on_settled = self._on_settled, None
        if settled is not None:
            settled()

    def set_canceller(self, cancel: Callable[[], None]) -> None:
        """Call ``cancel`` when the caller cancels (a producer on the event loop, such as a remote
        engine's stream, stops with it)."""
        self._on_settled = cancel

    def put(self, item: Item) -> None:
        """Hand over an item from a producer on this generation's own event loop."""
        if isinstance(item, str):
            self._output.append(item)
        _receive(self._loop, [(self, item)])

    @property
    def output_text(self) -> str:
        """Everything generated so far (complete once the result is in)."""
        return "".join(self._output)

    async def events(self) -> AsyncIterator[str | PromptProgress]:
        """Yield prompt progress and text as they come; raises the generation's error, if any,
        at the end. Text that piled up while the consumer was busy comes joined."""
        while True:
            item = await self._queue.get()
            if isinstance(item, PromptProgress):
                yield item
                continue
            pieces: list[str] = []
            while isinstance(item, str):
                pieces.append(item)
                if self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if pieces:
                yield "".join(pieces)
            if isinstance(item, PromptProgress):
                yield item
            elif isinstance(item, GenerationResult):
                self.result = item
                if item.error is not None:
                    raise item.error
                return

    async def stream(self) -> AsyncIterator[str]:
        """Yield text as it is generated; raises the generation's error, if any, at the end."""
        async for item in self.events():
            if isinstance(item, str):
                yield item

    async def text(self) -> str:
        """The whole generated text (non-streaming use)."""
        return "".join([piece async for piece in self.stream()])


Item = str | PromptProgress | GenerationResult


def post(items: list[tuple[Generation, Item]]) -> None:
    """Hand items from the worker thread to their generations, with one wake-up per event loop.

    The engine calls this once per decode step with everything that step produced for all its
    sequences: one ``call_soon_threadsafe`` (a write to the loop's self-pipe) instead of one per
    token per sequence, which on a small machine steals time from the decode threads.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Generation, Item]]] = {}
    for generation, item in items:
        if isinstance(item, str):
            generation._output.append(item)
        by_loop.setdefault(generation._loop, []).append((generation, item))
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(_receive, loop, batch)


def _receive(loop: asyncio.AbstractEventLoop, batch: list[tuple[Generation, Item]]) -> None:
    for generation, item in batch:
        generation._queue.put_nowait(item)
        if isinstance(item, GenerationResult):
            generation._settle()
        if isinstance(item, GenerationResult) and generation.on_done is not None:
            loop.call_soon(generation.on_done, generation, item)  # its own callback: a
            # failing observer is logged by the loop and cannot stop the rest of the batch
