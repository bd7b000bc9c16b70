"""The audit log (README: Authentication): one JSON object per line. ``audit.jsonl`` holds token and
setting changes, appended by whichever process made them (the CLI, or the daemon for
``server.cors``); it is written at a human pace and never rotated. A change's entry is written
before the change, under the lock of the file it changes: every change that was made is in the
log (a full disk refuses the change, never just its entry); an entry whose change then failed
records an attempt, and the command that tried said so. Refused requests are counted
apart, in ``refusals.jsonl`` and its rotated files (:mod:`lms.auth.refusals`), so that no flood can
push a change out of the log. :func:`read` merges both.

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
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from lms import config, paths, storage
from lms.auth.tokens import redact

MAX_FIELD_LENGTH = 512


class AuditEvent(StrEnum):
    TOKEN_CREATED = "token_created"
    TOKEN_EDITED = "token_edited"
    TOKEN_ROTATED = "token_rotated"
    TOKEN_REMOVED = "token_removed"
    AUTH_SETTING_CHANGED = "auth_setting_changed"
    MCP_SETTING_CHANGED = "mcp_setting_changed"
    REMOTE_CHANGED = "remote_changed"  # lms remote add / rm: name and URLs, never the key
    REQUEST_REFUSED = "request_refused"  # written by lms.auth.refusals only


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
    text = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
    line = text.encode("utf-8", "backslashreplace")
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


def security_setting(key: str, old: Any, new: Any) -> None:
    """A :data:`lms.config.BeforeWrite` hook: record a change of a security setting."""
    if config.setting(key).security and old != new:
        setting_changed(key, _jsonable(old), _jsonable(new))


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def read(since: datetime | None = None, *, path: Path | None = None) -> list[dict[str, Any]]:
    """Every entry (oldest first), or those at or after ``since``: the changes of audit.jsonl
    and the refusals of refusals.jsonl and its rotated files, merged by time. With ``path``,
    the entries of that one file. Damaged lines are skipped."""
    if path is not None:
        return _parse(_lines(path), since)
    changes = _parse(_lines(paths.audit_log()), since)
    from lms.auth.refusals import RefusalLog  # asyncio: not for the CLI's token commands

    refused = _parse(RefusalLog().read_lines(), since)
    return sorted(changes + refused, key=lambda entry: _moment(entry))


def _lines(path: Path) -> Iterable[bytes]:
    try:
        return path.read_bytes().splitlines()
    except FileNotFoundError:
        return []


def _moment(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["time"])


def _parse(lines: Iterable[bytes], since: datetime | None) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for raw in lines:
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
