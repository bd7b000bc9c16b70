"""Stored chats (README: Where state lives; APIs): what ``previous_response_id`` continues, owned
by a token.

Each stored response keeps the whole conversation up to and including its own answer, so a
response id is a point in a conversation: continuing from an older id branches it, and pruning
old responses (the store is bounded) never breaks a newer one. A response belongs to the token
that created it (``None`` with auth off); any other caller gets "not found", exactly as if the
id did not exist. Blocking SQLite calls: run them off the event loop.

A full disk raises StorageFullError (``storage.guard_full``) and the failed insert is rolled
back: every response stored before stays readable.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lms import paths, storage
from lms.errors import InvalidParameterError, PreviousResponseNotFoundError

DEFAULT_LIMIT = 2000
RESPONSE_PREFIX = "resp_"


@dataclass(frozen=True)
class StoredResponse:
    id: str
    owner: str | None
    model: str
    created_at: float
    messages: list[dict[str, Any]]
    output: list[dict[str, Any]]


def new_response_id() -> str:
    return RESPONSE_PREFIX + secrets.token_hex(24)


class ChatStore:
    """SQLite table of responses, bounded to ``limit`` rows (oldest pruned first)."""

    def __init__(self, path: Path | None = None, limit: int = DEFAULT_LIMIT) -> None:
        self._path = path
        self.limit = limit

    @property
    def path(self) -> Path:
        return self._path or paths.chats_db()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        path = self.path
        with storage.guard_full(path):
            paths.ensure_dir(path.parent)
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            conn = sqlite3.connect(path, timeout=10)
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS responses ("
                    " id TEXT PRIMARY KEY, owner TEXT, model TEXT NOT NULL,"
                    " created_at REAL NOT NULL, messages TEXT NOT NULL, output TEXT NOT NULL)"
                )
                with conn:
                    yield conn
            finally:
                conn.close()

    def save(
        self,
        *,
        owner: str | None,
        model: str,
        messages: list[dict[str, Any]],
        output: list[dict[str, Any]],
        response_id: str | None = None,
    ) -> str:
        """Store a response (the conversation including its answer); returns its id.

        StorageFullError when the disk is full (nothing of this response is stored).
        """
        response_id = response_id or new_response_id()
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO responses (id, owner, model, created_at, messages, output)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (response_id, owner, model, time.time(), json.dumps(messages), json.dumps(output)),
            )
            conn.execute(
                "DELETE FROM responses WHERE rowid NOT IN"
                " (SELECT rowid FROM responses ORDER BY created_at DESC, rowid DESC LIMIT ?)",
                (self.limit,),
            )
        return response_id

    def load(self, response_id: str, owner: str | None) -> StoredResponse:
        """The stored response, if ``owner`` created it; else "not found" (no existence leak)."""
        if not response_id.startswith(RESPONSE_PREFIX):
            raise InvalidParameterError(
                f"'previous_response_id' must start with {RESPONSE_PREFIX!r}",
                param="previous_response_id",
            )
        with self._connect() as conn:
            row = conn.execute(
                "SELECT id, owner, model, created_at, messages, output FROM responses WHERE id = ?",
                (response_id,),
            ).fetchone()
        if row is None or row[1] != owner:
            raise PreviousResponseNotFoundError(
                f"no stored response with id {response_id!r}",
                param="previous_response_id",
            )
        return StoredResponse(
            id=row[0],
            owner=row[1],
            model=row[2],
            created_at=row[3],
            messages=json.loads(row[4]),
            output=json.loads(row[5]),
        )

    def count(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
