"""Sampling parameters and stop-string handling, independent of llama.cpp (pure, testable)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks of the sampler. Neutral values switch a stage off."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    # GBNF text (llama.cpp's grammar format, root rule ``root``) the output must match. The
    # grammar masks the logits before any other stage, greedy included.
    grammar: str | None = None
    # False: decode the whole prompt even when a slot holds a shared prefix (llama.cpp server's
    # ``cache_prompt``), so the output cannot depend on which requests ran before.
    cache_prompt: bool = True
    # Speculative decoding (docs/SPECULATIVE.md): False turns every kind off for this request.
    speculative: bool = True
    # Exactly this many guessed tokens per step when speculating (the SDK's
    # ``numDraftTokensExact``); None lets the engine choose from what verifying costs.
    draft_tokens: int | None = None
    # A draft model's key (``draft_model``); the engine must hold it (``Engine.attach_draft``).
    draft_model: str | None = None

    @property
    def is_greedy(self) -> bool:
        """Temperature 0 without penalties: the argmax of the (grammar-allowed) logits, no sampler
        chain needed."""
        return (
            self.temperature <= 0.0
            and self.repeat_penalty == 1.0
            and self.presence_penalty == 0.0
            and self.frequency_penalty == 0.0
        )


@dataclass
class StopMatcher:
    """Finds stop strings in streamed text and holds back what could be the start of one.

    ``feed`` returns the text that is safe to emit; once a stop string is seen, ``stopped`` is
    true and nothing after it is ever emitted.
    """

    stops: tuple[str, ...]
    _pending: str = ""
    stopped: bool = False
    _longest: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.stops = tuple(s for s in self.stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        hold = self._held_suffix()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out

    def flush(self) -> str:
        """The held-back text, at the end of generation (it did not become a stop string)."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _held_suffix(self) -> int:
        # Longest suffix of the pending text that is a proper prefix of some stop string.
        text = self._pending
        for n in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
