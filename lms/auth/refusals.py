"""Refused requests in the audit log, counted and bounded under any flood (README: Authentication).

Refusals go to their own file, ``refusals.jsonl`` beside ``audit.jsonl`` (which keeps token and
setting changes, and is never rotated), so a flood can never push a token change out of the log.

**Every refusal is counted.** Refusals are grouped by a key a client cannot vary cheaply:
(peer network, error code, method, route *template*, token id — a registered id, ``unknown`` for
a presented token that is not one, ``none`` for no token). The first refusal of a new key is
written at once (``count`` 1); its repeats in a window of :data:`WINDOW_SECONDS` (all of them,
for a key already seen in the window before) become one line with their ``count``, written when
the window closes: by a timer the
recorder arms on the running event loop (so a quiet period flushes them), by the next refusal
after the window, and by :meth:`RefusalRecorder.flush` at shutdown. A window holds at most
:data:`MAX_KEYS` keys; refusals of further keys are counted in one ``(other)`` line. The sum of
``count`` over the lines is the number of refusals.

**Growth is bounded.** At most ``2 * (MAX_KEYS + 1)`` lines a window (one a key while a flood
lasts), and the file is rotated
when a write would take it past :data:`MAX_BYTES`: ``refusals.jsonl`` → ``.1`` → … →
``.{KEEP - 1}``, the oldest dropped, so the refusals take at most ``KEEP * MAX_BYTES`` on disk.
Writers and readers hold the file's lock (``flock``, shared by the CLI and the daemon) while
they append, rotate or read the set of files.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lms import paths, storage
from lms.auth.tokens import redact
from lms.errors import StorageFullError

log = logging.getLogger("lms.auth")

#: Seconds of one coalescing window.
WINDOW_SECONDS = 10.0
#: Distinct refusal keys per window; refusals of further keys share one ``(other)`` line.
MAX_KEYS = 64
#: Size at which ``refusals.jsonl`` is rotated.
MAX_BYTES = 1024 * 1024
#: Files kept: ``refusals.jsonl`` and ``refusals.jsonl.1`` … ``.{KEEP - 1}``.
KEEP = 5
#: Refusals from one peer network in a window after which each further one is answered late.
TARPIT_AFTER = 100
#: How late (seconds): a flooding connection then waits instead of taking the event loop's time.
TARPIT_SECONDS = 0.05
#: Longest string field written (a route template is short; this bounds the unexpected).
MAX_FIELD_LENGTH = 512

EVENT = "request_refused"


@dataclass(frozen=True, slots=True)
class RefusalKey:
    """What refusals are counted by: nothing in it can be varied freely by a client."""

    peer: str
    reason: str
    method: str
    route: str
    token_id: str

    def fields(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "method": self.method,
            "route": self.route,
            "reason": self.reason,
            "peer": self.peer,
        }


#: The bucket of the refusals of a window's keys past :data:`MAX_KEYS`.
OTHER = RefusalKey(peer="*", reason="(other)", method="*", route="(other)", token_id="*")


@functools.lru_cache(maxsize=1024)
def peer_class(address: str | None) -> str:
    """The network a peer is in, as counted: ``local`` (loopback, Unix socket, unknown), its
    IPv4 /24 or its IPv6 /48 (a client can pick any address of its own network for free)."""
    if not address:
        return "local"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "local"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "local"
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def log_path() -> Path:
    """``refusals.jsonl``, beside the audit log."""
    return paths.audit_log().with_name("refusals.jsonl")


def rotated(path: Path) -> list[Path]:
    """``path`` and its rotated files, oldest first."""
    return [path.with_name(f"{path.name}.{n}") for n in range(KEEP - 1, 0, -1)] + [path]


class RefusalLog:
    """Appends lines to ``refusals.jsonl``, rotating it at :data:`MAX_BYTES`."""

    def __init__(self, path: Path | None = None, max_bytes: int = MAX_BYTES) -> None:
        self._path = path
        self.max_bytes = max_bytes

    @property
    def path(self) -> Path:
        return self._path or log_path()

    def write(self, entries: list[dict[str, Any]]) -> None:
        """Append ``entries`` (one ``write``; rotating first when they would not fit)."""
        if not entries:
            return
        data = b"".join(_encode(entry) for entry in entries)
        target = self.path
        paths.ensure_dir(target.parent)
        with storage.locked(target):
            try:
                size = target.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                self._rotate(target)
                size = 0
            fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # A writer killed mid-line leaves no newline: start on a fresh line.
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                os.write(fd, data)
            finally:
                os.close(fd)

    def read_lines(self) -> Iterator[bytes]:
        """Every line of every kept file, oldest first (under the shared lock)."""
        target = self.path
        chunks: list[bytes] = []
        if not target.parent.exists():
            return iter(())
        with storage.locked(target, shared=True):
            for path in rotated(target):
                with contextlib.suppress(FileNotFoundError):
                    chunks.append(path.read_bytes())
        return (line for chunk in chunks for line in chunk.splitlines())

    @staticmethod
    def _rotate(target: Path) -> None:
        files = rotated(target)  # oldest first; files[-1] is target itself
        with contextlib.suppress(FileNotFoundError):
            files[0].unlink()
        for older, newer in itertools.pairwise(files):
            with contextlib.suppress(FileNotFoundError):
                os.replace(newer, older)


class RefusalRecorder:
    """Counts refused requests and writes them to :class:`RefusalLog`, coalesced by key.

    Call :meth:`record` from the event loop (or any single thread); :meth:`flush` at shutdown.
    A write that fails (disk full, StorageFullError or OSError) keeps its counts for the next
    flush: none is lost, and the refused request still gets its own answer.
    """

    def __init__(
        self,
        log_file: RefusalLog | None = None,
        *,
        window: float = WINDOW_SECONDS,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log_file or RefusalLog()
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._opened: float | None = None
        self._seen: set[RefusalKey] = set()
        self._previous: set[RefusalKey] = set()
        self._unwritten: dict[RefusalKey, int] = {}
        self._since: dict[RefusalKey, datetime] = {}
        self._peers: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> int:
        """Refusals counted but not written yet."""
        return sum(self._unwritten.values())

    def peer_refusals(self, peer: str) -> int:
        """Refusals from the peer network ``peer`` (see :func:`peer_class`) in this window."""
        return self._peers.get(peer if peer in self._peers else "*", 0)

    def record(self, key: RefusalKey) -> None:
        """Count one refusal (written now if it is the first of its key in this window)."""
        now = self._clock()
        if self._opened is not None and now - self._opened >= self.window:
            self.flush()
        if self._opened is None:
            self._opened = now
            self._arm()
        peer = key.peer if key.peer in self._peers or len(self._peers) < self.max_keys else "*"
        self._peers[peer] = self._peers.get(peer, 0) + 1
        if key not in self._seen and len(self._seen) >= self.max_keys:
            key = OTHER
        if key in self._seen or key is OTHER:
            self._count(key, 1)
            return
        self._seen.add(key)
        if key in self._previous:  # a flood going on: one line a window is enough
            self._count(key, 1)
            return
        entry = _entry(key, 1, None)
        try:
            self.log.write([entry])
        except (OSError, StorageFullError):
            log.exception("cannot write the audit log of refusals; counted for the next flush")
            self._count(key, 1)
            return
        _log_refusal(key, 1)

    def flush(self) -> None:
        """Write the counts of the window and start a new one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._opened = None
        self._previous, self._seen = self._seen, set()
        self._peers.clear()
        if not self._unwritten:
            return
        batch, since = self._unwritten, self._since
        self._unwritten, self._since = {}, {}
        try:
            self.log.write([_entry(key, count, since.get(key)) for key, count in batch.items()])
        except (OSError, StorageFullError):
            log.exception("cannot write the audit log of refusals; counted for the next flush")
            for key, count in batch.items():
                self._count(key, count, since.get(key))
            return
        for key, count in batch.items():
            _log_refusal(key, count)

    def _count(self, key: RefusalKey, count: int, since: datetime | None = None) -> None:
        self._unwritten[key] = self._unwritten.get(key, 0) + count
        self._since.setdefault(key, since or datetime.now(UTC))

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (the CLI, a unit test): the next record or flush() writes them
        self._timer = loop.call_later(self.window, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.flush()
        except Exception:  # a timer callback must never raise into the loop
            log.exception("cannot flush the refusal counts")


def _entry(key: RefusalKey, count: int, since: datetime | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"time": _stamp(datetime.now(UTC)), "event": EVENT}
    entry.update({name: _scrub(value) for name, value in key.fields().items()})
    entry["count"] = count
    if since is not None:
        entry["since"] = _stamp(since)
    return entry


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _scrub(value: str) -> str:
    value = redact(value)
    return value if len(value) <= MAX_FIELD_LENGTH else value[:MAX_FIELD_LENGTH] + "…"


def _encode(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
        "utf-8", "backslashreplace"
    )


def _log_refusal(key: RefusalKey, count: int) -> None:
    log.info(
        "refused %s %s: %s (token %s, from %s)%s",
        key.method,
        key.route,
        key.reason,
        key.token_id,
        key.peer,
        f" (x{count})" if count > 1 else "",
    )
