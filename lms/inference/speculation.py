"""Speculative decoding's guesses and when guessing pays (pure Python, no llama.cpp).

A generating sequence may add guessed next tokens to its row in the decode step; the model's
logits of every row verify them, and every guess it agrees with is a step saved
(docs/SPECULATIVE.md). This module holds what the engine decides that with:

- :class:`Lookup`: guesses looked up in the request's own prompt and output (prompt-lookup
  decoding). Each sequence has its own; nothing is ever looked up across requests, so one API
  token's text can never be guessed into another's output.
- :class:`Costs`: what one ``llama_decode`` of n rows takes on this machine, measured (on a
  small CPU two rows cost as much as two steps, four barely more than two: the shape of that
  curve decides how many guesses are worth verifying, and differs from machine to machine).
- :func:`plan`: how many guesses each sequence adds to the next step, so that the expected
  tokens per millisecond of the whole step is highest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "DRAFT_MODEL_MATCH",
    "MAX_GUESSES",
    "Costs",
    "Guessing",
    "Lookup",
    "expected_accepted",
    "plan",
]

#: At most this many guesses per sequence and step (the SDK's ``numDraftTokensExact`` too).
MAX_GUESSES = 16
#: The n-gram sizes looked up, longest first: a suffix of two tokens is the least that names a
#: place in the text; single tokens repeat too often to predict anything.
NGRAMS = (3, 2)
#: How far back a match is compared to judge it (tokens).
MATCH_HORIZON = 16
#: Verified guesses a sequence's own record weighs against the prior of a match's length.
PRIOR_WEIGHT = 4.0
#: The match length whose prior a draft model's guesses start from (until the sequence has a
#: record): a small model of the same family agrees with the large one most of the time.
DRAFT_MODEL_MATCH = 8
#: A plan with guesses must beat the plan without them by this factor (costs are estimates).
MARGIN = 1.03


class Lookup:
    """Prompt-lookup guesses from one request's tokens: where the text's last two or three
    tokens occurred before, the tokens that followed them then are the guess.

    The index maps each n-gram to the position right after its latest occurrence whose
    continuation is already known; the current suffix is indexed only when the next token
    arrives, so a lookup never finds itself.
    """

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        index, history = self._index, self.tokens
        for token in tokens:
            history.append(token)
            end = len(history) - 1  # the new token's position: the continuation of what precedes
            for n in NGRAMS:
                if end >= n:
                    index[tuple(history[end - n : end])] = end

    def guess(self, limit: int) -> tuple[list[int], int]:
        """Up to ``limit`` guessed next tokens and the match's length in tokens (how far back
        the text before the guess agrees with the current suffix; 0 with no guess)."""
        history = self.tokens
        size = len(history)
        for n in NGRAMS:
            if size < n:
                continue
            start = self._index.get(tuple(history[size - n :]))
            if start is None:
                continue
            guess = history[start : start + limit]
            matched = n
            while (
                matched < MATCH_HORIZON
                and start - matched - 1 >= 0
                and history[start - matched - 1] == history[size - matched - 1]
            ):
                matched += 1
            return guess, matched
        return [], 0


def prior(matched: int) -> float:
    """How likely a guess is right before the sequence has a record: a longer match of the
    text before it predicts its continuation better (2 tokens: 0.5, 16 tokens: ~0.9)."""
    return 1.0 - 1.0 / (1.0 + matched / 2.0) if matched else 0.0


@dataclass
class Guessing:
    """One sequence's speculation: its source of guesses and its record of verified ones."""

    lookup: Lookup | None = None
    accepted: int = 0
    verified: int = 0  # guesses compared with the model's choice (accepted + rejected)
    total: int = 0
    rejected: int = 0
    ignored: int = 0

    def rate(self, matched: int) -> float:
        """The chance the next guess is right: the match's prior, moved towards this sequence's
        own record as it grows."""
        return (self.accepted + PRIOR_WEIGHT * prior(matched)) / (self.verified + PRIOR_WEIGHT)


def expected_accepted(rate: float, k: int) -> float:
    """Expected accepted guesses out of ``k`` when each is right with ``rate`` and the first
    wrong one ends the run: rate + rate² + … + rateᵏ."""
    if rate >= 1.0:
        return float(k)
    return rate * (1.0 - rate**k) / (1.0 - rate)


@dataclass
class Costs:
    """Milliseconds per ``llama_decode`` by the number of rows in the batch, as measured."""

    alpha: float = 0.1  # weight of a new measurement (steady, yet follows a changing load)
    _ms: dict[int, float] = field(default_factory=dict)

    def record(self, rows: int, ms: float) -> None:
        old = self._ms.get(rows)
        self._ms[rows] = ms if old is None else old + self.alpha * (ms - old)

    def known(self, rows: int) -> bool:
        return rows in self._ms

    def estimate(self, rows: int) -> float | None:
        """The cost of ``rows`` rows: measured, else interpolated between the nearest measured
        sizes around it; None past the largest measured size."""
        if rows in self._ms:
            return self._ms[rows]
        below = max((r for r in self._ms if r < rows), default=None)
        above = min((r for r in self._ms if r > rows), default=None)
        if below is None or above is None:
            return None
        low, high = self._ms[below], self._ms[above]
        return low + (high - low) * (rows - below) / (above - below)


@dataclass
class Candidate:
    """A generating sequence that could guess this step."""

    key: int  # the sequence's slot
    guess: list[int]
    rate: float
    exact: int | None = None  # the request's fixed number of guesses, if it set one


def plan(rows: int, candidates: Sequence[Candidate], costs: Costs, max_rows: int) -> dict[int, int]:
    """How many of its guesses each candidate adds to a step that already holds ``rows`` rows
    (one per generating sequence), so that expected tokens per millisecond is highest.

    Candidates are taken most promising first; each takes the number of guesses (0 included)
    that maximises the whole step's expected tokens over its estimated cost, and keeps it only
    when that beats not guessing by :data:`MARGIN`. Requests with a fixed number take it
    regardless of cost. Never more than ``max_rows`` rows in all.
    """
    chosen: dict[int, int] = {}
    tokens = float(rows)
    for cand in sorted(candidates, key=lambda c: c.exact is None):
        if cand.exact is not None:
            k = min(cand.exact, len(cand.guess), max_rows - rows)
            if k > 0:
                chosen[cand.key] = k
                rows += k
                tokens += expected_accepted(cand.rate, k)
    for cand in sorted(candidates, key=lambda c: -c.rate):
        if cand.exact is not None:
            continue
        base = costs.estimate(rows)
        if base is None:
            break
        best_k, best_rate = 0, tokens / base * MARGIN
        for k in range(1, min(len(cand.guess), max_rows - rows) + 1):
            cost = costs.estimate(rows + k)
            if cost is None:
                break
            rate = (tokens + expected_accepted(cand.rate, k)) / cost
            if rate > best_rate:
                best_k, best_rate = k, rate
        if best_k:
            chosen[cand.key] = best_k
            rows += best_k
            tokens += expected_accepted(cand.rate, best_k)
    return chosen
