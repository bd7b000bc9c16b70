"""Which slot a new request should take, so that it reuses the KV cells a finished one left.

When a sequence ends, its slot keeps the KV cells of everything it decoded (prompt and output).
A later request whose prompt starts with the same tokens — the next turn of a chat re-sends the
whole conversation; agents and benchmarks re-send one system prompt — takes that slot and skips
the shared prefix: only the rest of its prompt is decoded. llama.cpp's server and LM Studio do
the same.

A cached prefix is only offered to requests of the same *scope* (the API token that made it,
when auth is on): otherwise a client could time its first token to learn whether some other
token's prompt started with a guess.

Pure Python: the engine removes the cells past the reused prefix (``llama_memory_seq_rm``)
before the request runs, so a slot never serves stale state.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

__all__ = ["PromptCache"]


@dataclass
class _Entry:
    tokens: list[int]
    scope: str | None
    used: int  # a clock value, for least-recently-used eviction


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share.

    Slices compare in C: a whole match costs one comparison, a mismatch a binary search of
    them, where a loop over a long chat's 30k tokens in Python would hold up the decode step.
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    same, differs = 0, n  # a[:same] == b[:same] and a[:differs] != b[:differs]
    while differs - same > 1:
        middle = (same + differs) // 2
        if a[same:middle] == b[same:middle]:
            same = middle
        else:
            differs = middle
    return same


class PromptCache:
    """The tokens whose KV cells each idle slot still holds."""

    def __init__(self, slots: int) -> None:
        self._entries: list[_Entry | None] = [None] * slots
        self._clock = itertools.count(1)

    def choose(self, free: list[int], prompt: list[int], scope: str | None) -> tuple[int, int]:
        """``(slot, reuse)``: the free slot to run ``prompt`` in and how many of its leading
        tokens are already in that slot's cells.

        The slot sharing the longest prefix of the same scope wins, if that prefix is at least
        half of the prompt or of what the slot holds; otherwise an empty slot, else the least
        recently used one (keeping the warmest caches alive; whatever prefix it shares is
        still reused). So two prompts that share only a chat template's first tokens keep a
        slot each instead of evicting each other's cells turn by turn. At least the last prompt
        token is always decoded again: its logits give the first token.
        """
        if not free:
            raise ValueError("no free slot")
        best, reuse = -1, 0
        for slot in free:
            shared = self._shared(slot, prompt, scope)
            held = self.cached(slot)
            if shared > reuse and (2 * shared >= len(prompt) or 2 * shared >= held):
                best, reuse = slot, shared
        if best < 0:
            best = min(free, key=lambda s: self._age(s))
            reuse = self._shared(best, prompt, scope)
        self._entries[best] = None  # the slot is taken: the caller clears past ``reuse``
        return best, reuse

    def _shared(self, slot: int, prompt: list[int], scope: str | None) -> int:
        """Leading prompt tokens ``slot`` holds for ``scope`` (never the last prompt token)."""
        entry = self._entries[slot]
        if entry is None or entry.scope != scope:
            return 0
        return max(0, min(common_prefix(entry.tokens, prompt), len(prompt) - 1))

    def keep(self, slot: int, tokens: list[int], scope: str | None) -> None:
        """Record what a finished sequence left in ``slot``'s cells."""
        self._entries[slot] = _Entry(tokens, scope, next(self._clock)) if tokens else None

    def forget(self, slot: int) -> None:
        """The slot's cells were cleared (or cannot be trusted): nothing to reuse."""
        self._entries[slot] = None

    def cached(self, slot: int) -> int:
        """How many tokens ``slot`` holds for reuse (0 for none)."""
        entry = self._entries[slot]
        return len(entry.tokens) if entry is not None else 0

    def _age(self, slot: int) -> int:
        entry = self._entries[slot]
        return 0 if entry is None else entry.used
