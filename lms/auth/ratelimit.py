"""Per-token requests-per-minute limits (the ``rpm`` of a token), in the daemon's memory.

An exact sliding window: a token with ``rpm = N`` gets at most N accepted requests in any 60
seconds. Each token keeps the times of its accepted requests of the last minute in a deque; each
time is appended once and dropped once, so a check costs O(1) amortised, and memory is bounded by
``rpm`` per active token (``rpm`` is at most ``record.MAX_RPM``). Refused requests do not count.

The window restarts when the daemon restarts (limits are not persisted). Not thread-safe: call it
from the event loop.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from lms.auth.record import TokenRecord
from lms.errors import RateLimitedError

WINDOW_SECONDS = 60.0


class RateLimiter:
    """Sliding-window limiter keyed by token id. ``clock`` is monotonic seconds (injectable)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def hit(self, record: TokenRecord, now: float | None = None) -> None:
        """Count one request of ``record``, or raise RateLimitedError (429) with ``Retry-After``.

        A token without ``rpm`` is never limited (and costs nothing). The limit in force is the
        record's current ``rpm``, so ``lms token edit --rpm`` applies to the next request.
        """
        if record.rpm is None:
            return
        self.check(record.id, record.rpm, now)

    def check(self, key: str, rpm: int, now: float | None = None) -> None:
        """Count one request under ``key`` limited to ``rpm`` a minute, else RateLimitedError."""
        now = self._clock() if now is None else now
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        horizon = now - WINDOW_SECONDS
        while hits and hits[0] <= horizon:
            hits.popleft()
        if len(hits) >= rpm:
            # The request that frees a slot is the oldest one still inside the window, once the
            # window has slid past it (after an rpm decrease several may have to leave).
            freed_at = hits[len(hits) - rpm] + WINDOW_SECONDS
            retry_after = max(1, math.ceil(freed_at - now))
            raise RateLimitedError(
                f"the API token {key} is over its limit of {rpm} requests per minute; "
                f"retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
                data={"reason": "rate_limited", "token_id": key},
            )
        hits.append(now)

    def prune(self, now: float | None = None) -> int:
        """Forget tokens with no request in the last minute (call it now and then, e.g. with
        the usage flush). Returns how many were dropped."""
        now = self._clock() if now is None else now
        horizon = now - WINDOW_SECONDS
        stale = [key for key, hits in self._hits.items() if not hits or hits[-1] <= horizon]
        for key in stale:
            del self._hits[key]
        return len(stale)

    def __len__(self) -> int:
        return len(self._hits)
