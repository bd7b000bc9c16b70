"""Live events of the daemon for ``lms log stream`` (README: Command reference): requests and model
I/O.

Publishing is cheap when nobody listens (``wants`` lets callers skip building an event). Each
subscriber has a bounded queue: a slow reader loses events (counted), never slows the server.
Events never carry a secret: requests are logged by route and token *id* only, and every string
of every event is redacted (:func:`lms.redaction.redact`) before a subscriber sees it: a prompt
that quotes a token shows ``sk-lm-<id>:***``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any, Literal

from lms.redaction import redact_value

Source = Literal["server", "model"]
SOURCES: tuple[Source, ...] = ("server", "model")


class Subscription:
    def __init__(self, sources: frozenset[str], backlog: int) -> None:
        self.sources = sources
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=backlog)
        self.dropped = 0


class LogHub:
    """Fan-out of events to live subscribers (event-loop thread only)."""

    def __init__(self, backlog: int = 1024) -> None:
        self._subscribers: list[Subscription] = []
        self._backlog = backlog

    def wants(self, source: Source) -> bool:
        return any(source in s.sources for s in self._subscribers)

    def publish(self, source: Source, event: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        stamped = {
            "timestamp": round(time.time() * 1000),
            "source": source,
            "data": redact_value(event),
        }
        for subscription in self._subscribers:
            if source not in subscription.sources:
                continue
            try:
                subscription.queue.put_nowait(stamped)
            except asyncio.QueueFull:
                subscription.dropped += 1

    @contextlib.contextmanager
    def subscribe(self, sources: frozenset[str]) -> Iterator[Subscription]:
        subscription = Subscription(sources, self._backlog)
        self._subscribers.append(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.remove(subscription)
