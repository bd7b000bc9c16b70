"""The pid-file lock: one daemon per runtime directory, never two on one socket."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from lms.errors import DaemonRunningError


class PidLock:
    """An ``flock`` held on the pid file for the daemon's whole life.

    The kernel drops the lock when the process dies, even by ``kill -9``, so a stale pid file
    never blocks the next start: whoever gets the lock owns the runtime directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DaemonRunningError(
                f"another lms daemon (pid {holder}) is already running for {self.path.parent}",
                hint="stop it with: lms daemon down",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
