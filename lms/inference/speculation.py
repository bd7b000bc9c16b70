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

import itertools
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

#: At most this many guesses per sequence and step. Text copied from the prompt is guessed
#: right run after run, and one step of many rows costs far less than as many steps.
MAX_GUESSES = 63
#: The n-gram sizes looked up, longest first: a suffix of two tokens is the least that names a
#: place in the text; single tokens repeat too often to predict anything.
NGRAMS = (3, 2)
#: Occurrences of each n-gram remembered (the latest ones).
OCCURRENCES = 8
#: How far back a match is compared to judge it (tokens).
MATCH_HORIZON = 32
#: Matches are judged in classes of their length (at least this many tokens): a sequence keeps
#: its record per class, since a guess continuing 32 copied tokens is right far more often
#: than one after a common pair of words.
MATCH_CLASSES = (32, 16, 8, 4, 2)
#: Verified guesses a sequence's own record weighs against the prior of a match's length.
PRIOR_WEIGHT = 2.0
#: The match length whose prior a draft model's guesses start from (until the sequence has a
#: record): a small model of the same family agrees with the large one most of the time.
DRAFT_MODEL_MATCH = 8
#: A plan with guesses must beat the plan without them by this factor (costs are estimates).
MARGIN = 1.03


class Lookup:
    """Prompt-lookup guesses from one request's tokens: where the text's last few tokens
    occurred before, the tokens that followed them there are the guess.

    The index maps each n-gram to the positions right after its latest few occurrences whose
    continuation is already known (the current suffix is indexed only when the next token
    arrives, so a lookup never finds itself). Of those, the one whose preceding text agrees
    with the current text the furthest back wins: in a rewritten file, a line that occurs
    twice is continued from where the surrounding lines match too.
    """

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens: list[int] = []
        self._index: dict[tuple[int, ...], list[int]] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        index, history = self._index, self.tokens
        for token in tokens:
            history.append(token)
            end = len(history) - 1  # the new token's position: the continuation of what precedes
            for n in NGRAMS:
                if end >= n:
                    places = index.setdefault(tuple(history[end - n : end]), [])
                    places.append(end)
                    if len(places) > OCCURRENCES:
                        del places[0]

    def guess(self, limit: int) -> tuple[list[int], int]:
        """Up to ``limit`` guessed next tokens and the match's length in tokens (how far back
        the text before the guess agrees with the current suffix; 0 with no guess)."""
        history = self.tokens
        size = len(history)
        for n in NGRAMS:
            if size < n:
                continue
            places = self._index.get(tuple(history[size - n :]))
            if not places:
                continue
            best, matched = places[-1], 0
            for start in reversed(places):
                length = n
                while (
                    length < MATCH_HORIZON
                    and start - length - 1 >= 0
                    and history[start - length - 1] == history[size - length - 1]
                ):
                    length += 1
                if length > matched:
                    best, matched = start, length
            # A continuation that runs into the end of the text repeats the span since the
            # match: the text is going round a loop, and the guess goes round it too.
            guess = history[best : best + limit]
            while len(guess) < limit:
                guess.append(guess[len(guess) - (size - best)])
            return guess, matched
        return [], 0


def prior(matched: int) -> float:
    """How likely a guess is right before the sequence has a record: a longer match of the
    text before it predicts its continuation better (2 tokens: 0.8, 4: 0.9, 16: 0.975). Set to
    try guessing at once (a wrong try costs one step; the record then decides)."""
    return 1.0 - 0.4 / matched if matched >= 2 else 0.0


def match_class(matched: int) -> int:
    """The class of a match ``matched`` tokens long (the largest of MATCH_CLASSES it reaches)."""
    return next((c for c in MATCH_CLASSES if matched >= c), 0)


@dataclass
class Guessing:
    """One sequence's speculation: its source of guesses, the counts it reports and the record
    its odds come from.

    The record also hears guesses that were not verified: when a step plans no guesses for a
    sequence that had one, its first token is compared with the token the model then chooses
    (:meth:`observed`, free). Without that, a sequence whose odds fell below what guessing
    costs would never guess again, even once its text turns into a copy.
    """

    lookup: Lookup | None = None
    total: int = 0
    accepted: int = 0
    rejected: int = 0
    ignored: int = 0
    #: Per match class: [right, judged] — verified guesses and observed ones.
    record: dict[int, list[int]] = field(default_factory=dict)
    right: int = 0  # over all classes
    judged: int = 0
    #: The class of this step's guess (what :meth:`verified` books under).
    current: int = 0
    #: This step's first guessed token when none was verified (for :meth:`observed`).
    unverified: int | None = None

    def rate(self, matched: int) -> float:
        """The chance a guess after a match ``matched`` tokens long is right: the class's own
        record, which starts from the sequence's record over all classes, which starts from the
        class's prior. So a sequence that copies guesses again right after a miss (its record
        says guesses are right), and free text, where they miss, stops guessing at all."""
        cls = match_class(matched)
        right, judged = self.record.get(cls, (0, 0))
        overall = (self.right + PRIOR_WEIGHT * prior(cls)) / (self.judged + PRIOR_WEIGHT)
        return (right + PRIOR_WEIGHT * overall) / (judged + PRIOR_WEIGHT)

    def verified(self, *, right: bool) -> None:
        """Book one guess compared with the model's choice."""
        if right:
            self.accepted += 1
        else:
            self.rejected += 1
        self._book(right)

    def observed(self, token: int) -> None:
        """The model chose ``token`` where an unverified guess said :attr:`unverified`."""
        if self.unverified is not None:
            self._book(token == self.unverified)
            self.unverified = None

    def _book(self, right: bool) -> None:
        counts = self.record.setdefault(self.current, [0, 0])
        counts[1] += 1
        self.judged += 1
        if right:
            counts[0] += 1
            self.right += 1


def expected_accepted(rate: float, k: int) -> float:
    """Expected accepted guesses out of ``k`` when each is right with ``rate`` and the first
    wrong one ends the run: rate + rate² + … + rateᵏ."""
    if rate >= 1.0:
        return float(k)
    return rate * (1.0 - rate**k) / (1.0 - rate)


@dataclass
class Costs:
    """Milliseconds per ``llama_decode`` by the number of rows in the batch, as measured."""

    #: How far a slower measurement moves the estimate (a faster one sets it): a busy machine
    #: only ever adds time, so one slow step must not make a size look expensive for good.
    alpha: float = 0.05
    _ms: dict[int, float] = field(default_factory=dict)
    _table: list[float] | None = None
    _stale: bool = False

    def record(self, rows: int, ms: float) -> None:
        old = self._ms.get(rows)
        self._ms[rows] = ms if old is None or ms < old else old + self.alpha * (ms - old)
        self._stale = True  # rebuilt at the next estimate: once per step

    def known(self, rows: int) -> bool:
        return rows in self._ms

    def estimate(self, rows: int, *, measured: bool = False) -> float | None:
        """The cost of ``rows`` rows: measured, else interpolated between the nearest measured
        sizes around it (with ``measured``: None — on a small CPU a size between two measured
        ones can cost more than both); None before anything was measured.

        Past the largest measured size each further row is guessed at half that size's cost
        per row: optimistic on purpose, so that a sequence whose guesses keep being right
        tries a larger step, which measures it (a wrong guess costs one step, after which the
        measured figure stands)."""
        table = self._table
        if table is None or self._stale:
            table = self._rebuild()
        if rows < len(table):
            value = table[rows]
            return None if value < 0 or (measured and rows not in self._ms) else value
        largest = len(table) - 1
        if largest < 1:
            return None
        return table[largest] * (1.0 + (rows - largest) / (2.0 * largest))

    def _rebuild(self) -> list[float]:
        """Costs of 0..largest measured rows (interpolated between measured sizes; -1 below the
        smallest), rebuilt after measurements."""
        sizes = sorted(self._ms)
        ms = dict(self._ms)
        # From 8 rows on, decodes run as matrix products whose cost per row does not grow
        # with the rows: a size measured above that (a slow moment) is capped by a smaller one.
        for low, high in itertools.combinations(sizes, 2):
            if low >= 8:
                ms[high] = min(ms[high], ms[low] * high / low)
        table = [-1.0] * ((sizes[-1] if sizes else 0) + 1)
        for low, high in itertools.pairwise(sizes):
            for rows in range(low, high):
                table[rows] = ms[low] + (ms[high] - ms[low]) * (rows - low) / (high - low)
        if sizes:
            table[sizes[-1]] = ms[sizes[-1]]
        self._table, self._stale = table, False
        return table


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
            cost = costs.estimate(rows + k, measured=True)
            if cost is None:
                continue
            rate = (tokens + expected_accepted(cand.rate, k)) / cost
            if rate > best_rate:
                best_k, best_rate = k, rate
        if best_k:
            chosen[cand.key] = best_k
            rows += best_k
            tokens += expected_accepted(cand.rate, best_k)
    return chosen
