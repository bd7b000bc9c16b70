"""Per-token usage, ``usage.sqlite3`` (README: Where state lives; Authentication): last use,
request and token counts.

The daemon counts in memory (:class:`UsageBuffer`, a dict update per request) and writes a batch
in one transaction every few seconds and at shutdown (:meth:`UsageBuffer.flush`); the CLI reads
the store for ``lms token list`` (:meth:`UsageStore.read`). Each operation opens its own short
connection, so flushing may run in a worker thread and the CLI may read while the daemon writes
(WAL mode). The database is created 0600.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lms import paths, storage
from lms.errors import StorageFullError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS token_usage (
    token_id TEXT PRIMARY KEY,
    last_used_at REAL NOT NULL,
    request_count INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    unknown_count INTEGER NOT NULL DEFAULT 0
)
"""
#: Databases made before remote engines lack the column of generations of unknown size.
_MIGRATE = "ALTER TABLE token_usage ADD COLUMN unknown_count INTEGER NOT NULL DEFAULT 0"

_UPSERT = """
INSERT INTO token_usage
    (token_id, last_used_at, request_count, prompt_tokens, completion_tokens, unknown_count)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (token_id) DO UPDATE SET
    last_used_at = max(last_used_at, excluded.last_used_at),
    request_count = request_count + excluded.request_count,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    unknown_count = unknown_count + excluded.unknown_count
"""


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """What the store knows about one token id."""

    token_id: str
    last_used_at: datetime | None
    request_count: int
    prompt_tokens: int
    completion_tokens: int
    #: Generations whose token counts are unknown (a remote engine reported none).
    unknown_count: int = 0

    def public_dict(self) -> dict[str, object]:
        """JSON-ready view (``lms token list --json``)."""
        last = self.last_used_at
        return {
            "last_used_at": last.isoformat().replace("+00:00", "Z") if last else None,
            "request_count": self.request_count,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "unknown_usage_count": self.unknown_count,
        }


@dataclass(slots=True)
class UsageDelta:
    """Counts accumulated in memory for one token id since the last flush."""

    last_used_at: float = 0.0
    request_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unknown_count: int = 0


class UsageStore:
    """``usage.sqlite3``. ``path`` defaults to ``paths.usage_db()`` at each call. No I/O until
    the first operation."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path

    @property
    def path(self) -> Path:
        return self._path or paths.usage_db()

    def read(self, token_ids: Collection[str] | None = None) -> dict[str, TokenUsage]:
        """Usage by token id (every id, or those of ``token_ids``). No database: empty."""
        if not self.path.exists():
            return {}
        with self._connect() as db:
            rows = db.execute(
                "SELECT token_id, last_used_at, request_count, prompt_tokens, completion_tokens,"
                " unknown_count FROM token_usage"
            ).fetchall()
        wanted = None if token_ids is None else set(token_ids)
        return {
            row[0]: TokenUsage(
                token_id=row[0],
                last_used_at=datetime.fromtimestamp(row[1], UTC) if row[1] else None,
                request_count=row[2],
                prompt_tokens=row[3],
                completion_tokens=row[4],
                unknown_count=row[5],
            )
            for row in rows
            if wanted is None or row[0] in wanted
        }

    def apply(self, deltas: Mapping[str, UsageDelta]) -> None:
        """Add ``deltas`` in one transaction (all or nothing)."""
        if not deltas:
            return
        # ``with db``: one transaction, committed on success, rolled back on error.
        with self._connect() as db, db:
            db.executemany(
                _UPSERT,
                [
                    (
                        token_id,
                        d.last_used_at,
                        d.request_count,
                        d.prompt_tokens,
                        d.completion_tokens,
                        d.unknown_count,
                    )
                    for token_id, d in deltas.items()
                ],
            )

    def forget(self, token_ids: Collection[str]) -> None:
        """Drop the rows of removed tokens (optional housekeeping)."""
        if not token_ids or not self.path.exists():
            return
        with self._connect() as db, db:
            db.executemany("DELETE FROM token_usage WHERE token_id = ?", [(t,) for t in token_ids])

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        path = self.path
        with storage.guard_full(path):
            paths.ensure_dir(path.parent)
            # Create the file 0600 before sqlite does (it would use the umask).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            db = sqlite3.connect(path, timeout=10.0)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(token_usage)")}
                if "unknown_count" not in columns:
                    db.execute(_MIGRATE)
                yield db
            finally:
                db.close()


class UsageBuffer:
    """In-memory counts the daemon adds to per request, written by :meth:`flush`.

    Not thread-safe by itself: count from the event loop; :meth:`take` the pending batch on the
    loop and hand it to :meth:`UsageStore.apply` in a worker thread if you want the write off the
    loop (:meth:`flush` does both at once).
    """

    def __init__(self, store: UsageStore) -> None:
        self._store = store
        self._pending: dict[str, UsageDelta] = {}

    @property
    def store(self) -> UsageStore:
        return self._store

    def record_request(self, token_id: str, now: datetime | None = None) -> None:
        """Count one accepted request of ``token_id`` and mark it used at ``now``."""
        delta = self._pending.get(token_id)
        if delta is None:
            delta = self._pending[token_id] = UsageDelta()
        delta.request_count += 1
        delta.last_used_at = (now or datetime.now(UTC)).timestamp()

    def record_tokens(
        self, token_id: str, prompt_tokens: int | None, completion_tokens: int | None
    ) -> None:
        """Add the token counts of a finished generation (None, None: counts unknown)."""
        delta = self._pending.get(token_id)
        if delta is None:
            delta = self._pending[token_id] = UsageDelta()
        if prompt_tokens is None or completion_tokens is None:
            delta.unknown_count += 1
            return
        delta.prompt_tokens += prompt_tokens
        delta.completion_tokens += completion_tokens

    @property
    def pending(self) -> int:
        """How many token ids have counts not yet written."""
        return len(self._pending)

    def take(self) -> dict[str, UsageDelta]:
        """Remove and return the pending batch (for :meth:`UsageStore.apply` elsewhere)."""
        batch, self._pending = self._pending, {}
        return batch

    def restore(self, batch: Mapping[str, UsageDelta]) -> None:
        """Put back a batch whose write failed, merged with what was counted meanwhile."""
        for token_id, old in batch.items():
            delta = self._pending.setdefault(token_id, UsageDelta())
            delta.last_used_at = max(delta.last_used_at, old.last_used_at)
            delta.request_count += old.request_count
            delta.prompt_tokens += old.prompt_tokens
            delta.completion_tokens += old.completion_tokens

    def flush(self) -> int:
        """Write the pending counts in one transaction; returns how many ids were written.

        On a database error the counts are kept for the next flush and the error is raised.
        """
        batch = self.take()
        if not batch:
            return 0
        try:
            self._store.apply(batch)
        except (sqlite3.Error, OSError, StorageFullError):
            self.restore(batch)
            raise
        return len(batch)
