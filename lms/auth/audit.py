"""The audit log, ``audit.jsonl`` (SPEC §4): one JSON object per line, appended by whichever
process acted (the CLI for token and setting changes, the daemon for refused requests).

Each line has ``time`` (``2026-01-01T12:00:00.123456Z``), ``event`` and the event's fields. A
token appears only by its id (or ``"none"``); every string is passed through
:func:`lms.auth.tokens.redact` as a last line of defence, so a secret never reaches the file.

Writes open the file with ``O_APPEND`` (created 0600) and write each line with one ``write`` while
holding the file's lock, so lines of concurrent writers never interleave. :func:`read` skips a
torn or damaged line (a writer killed mid-line) instead of failing.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from lms import paths, storage
from lms.auth.tokens import redact

MAX_FIELD_LENGTH = 512


class AuditEvent(StrEnum):
    TOKEN_CREATED = "token_created"
    TOKEN_EDITED = "token_edited"
    TOKEN_ROTATED = "token_rotated"
    TOKEN_REMOVED = "token_removed"
    AUTH_SETTING_CHANGED = "auth_setting_changed"
    MCP_SETTING_CHANGED = "mcp_setting_changed"
    REQUEST_REFUSED = "request_refused"


def append(
    event: AuditEvent, *, path: Path | None = None, now: datetime | None = None, **fields: Any
) -> dict[str, Any]:
    """Append one event (fields must be JSON-serialisable) and return the entry written."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    entry: dict[str, Any] = {
        "time": moment.isoformat().replace("+00:00", "Z"),
        "event": event.value,
    }
    entry.update({key: _scrub(value) for key, value in fields.items()})
    line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    target = path or paths.audit_log()
    with storage.locked(target), storage.guard_full(target):
        fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # A writer killed mid-line leaves no newline: start on a fresh line so that only the
            # torn entry is lost, not this one too.
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
        finally:
            os.close(fd)
    return entry


class RefusalRecorder:
    """Audits refused requests without letting a flood fill the disk.

    At most one line per (token id, route, reason) per ``interval`` seconds; refusals in
    between are counted and reported as ``repeated`` on the next line of that key. The key table
    is bounded (a flood of random token ids cannot grow it without limit).
    """

    def __init__(self, interval: float = 1.0, max_keys: int = 10_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[tuple[str, str, str], tuple[float, int]] = {}

    def record(self, token_id: str | None, method: str, route: str, reason: str) -> bool:
        """Audit one refusal; False when it was only counted (written with the next one)."""
        key = (token_id or "none", route, reason)
        now = time.monotonic()
        last, suppressed = self._last.get(key, (float("-inf"), 0))
        if now - last < self.interval:
            self._last[key] = (last, suppressed + 1)
            return False
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = (now, 0)
        fields: dict[str, Any] = {}
        if suppressed:
            fields["repeated"] = suppressed
        append(
            AuditEvent.REQUEST_REFUSED,
            token_id=token_id or "none",
            method=method,
            route=route,
            reason=reason,
            **fields,
        )
        return True


def request_refused(
    token_id: str | None,
    method: str,
    route: str,
    reason: str,
    *,
    path: Path | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Record a refused API request. ``reason`` is the error code (``invalid_api_key``, ...);
    ``route`` the request path; ``token_id`` the id the client presented, or None."""
    return append(
        AuditEvent.REQUEST_REFUSED,
        path=path,
        now=now,
        token_id=token_id or "none",
        method=method,
        route=route,
        reason=reason,
    )


def setting_changed(
    key: str, old: Any, new: Any, *, path: Path | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Record ``lms auth require`` / ``lms config set`` of an ``auth.*`` or ``mcp.*`` setting."""
    event = (
        AuditEvent.MCP_SETTING_CHANGED
        if key.startswith("mcp.")
        else (AuditEvent.AUTH_SETTING_CHANGED)
    )
    return append(event, path=path, now=now, key=key, old=old, new=new)


def read(since: datetime | None = None, *, path: Path | None = None) -> list[dict[str, Any]]:
    """Every entry (oldest first), or those at or after ``since``. Damaged lines are skipped."""
    target = path or paths.audit_log()
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        return []
    entries: list[dict[str, Any]] = []
    for raw in data.splitlines():
        try:
            entry = json.loads(raw)
            moment = datetime.fromisoformat(entry["time"])
        except (ValueError, KeyError, TypeError):
            continue
        if not isinstance(entry, dict) or moment.tzinfo is None:
            continue
        if since is None or moment >= since:
            entries.append(entry)
    return entries


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        value = redact(value)
        return value if len(value) <= MAX_FIELD_LENGTH else value[:MAX_FIELD_LENGTH] + "…"
    if isinstance(value, dict):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    return value
