"""Starting the daemon from the CLI: :func:`ensure_daemon` spawns ``python -m lms.daemon`` in the
background when none runs, waits for its ready line, and lets racing CLIs start only one.

Standard library only, like :mod:`lms.client`: the CLI must start fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lms import paths
from lms.client import POLL_INTERVAL, ControlClient
from lms.errors import DaemonNotRunningError, DaemonRunningError, ExitCode, LmsError, from_code
from lms.protocol import DaemonStatus

# How long a freshly spawned daemon may take to be ready (its first start assembles the
# default model: a 253 MB copy and its sha256).
START_TIMEOUT = 60.0
# How long a daemon that lost the race for the pid lock waits for the winner's socket.
_RACE_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class DaemonStart:
    """The outcome of :func:`ensure_daemon`."""

    status: DaemonStatus
    started: bool


def daemon_command(extra: Sequence[str] = ()) -> list[str]:
    """The command line of the daemon process (no secret ever goes there)."""
    return [sys.executable, "-m", "lms.daemon", *extra]


@contextlib.contextmanager
def _start_lock(deadline: float) -> Iterator[None]:
    lock = paths.start_lock()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LmsError(
                        f"another lms has been starting the daemon for too long ({lock} is locked)",
                        hint=f"see the daemon log: {paths.daemon_log()}",
                    ) from None
                time.sleep(POLL_INTERVAL)
        yield
    finally:
        os.close(fd)


def ensure_daemon(
    *,
    client: ControlClient | None = None,
    announce: Callable[[str], None] | None = None,
    timeout: float = START_TIMEOUT,
) -> DaemonStart:
    """Return the running daemon's status, starting a daemon in the background if none runs.

    CLIs racing to start it serialise on ``paths.start_lock()``: the loser waits, then finds the
    winner's daemon running. ``announce`` receives a one-line message when a start begins.
    Raises DaemonVersionError for a running daemon of another version.
    """
    client = client or ControlClient()
    try:
        return DaemonStart(client.status(), started=False)
    except DaemonNotRunningError:
        pass
    paths.ensure_private_dir(paths.runtime_dir())
    paths.check_socket_path(client.socket_path)
    deadline = time.monotonic() + timeout
    with _start_lock(deadline):
        try:
            return DaemonStart(client.status(), started=False)
        except DaemonNotRunningError:
            pass
        if announce is not None:
            announce("starting the daemon...")
        _spawn_and_wait(client, deadline, timeout)
        return DaemonStart(client.status(), started=True)


def _spawn_and_wait(client: ControlClient, deadline: float, timeout: float) -> None:
    log = paths.daemon_log()
    paths.ensure_dir(log.parent)
    read_end, write_end = os.pipe()
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.set_inheritable(write_end, True)
        argv = daemon_command(["--ready-fd", str(write_end)])
        # posix_spawn rather than Popen: the daemon outlives this process, and a Popen object
        # that is never waited for warns when it is collected.
        pid = os.posix_spawn(
            sys.executable,
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(write_end)
        os.close(log_fd)
    try:
        line = _read_ready_line(read_end, deadline)
    finally:
        os.close(read_end)
    if line is None:
        raise LmsError(
            f"the daemon (pid {pid}) did not become ready within {timeout:g} s",
            hint=f"see its log: {log}",
        )
    ready = _parse_ready(line)
    if ready is not None and ready.get("ok") is True:
        return
    exit_code = _reap(pid, deadline)
    code = ready.get("code") if ready is not None else None
    if line and ready is None:
        raise LmsError(f"the daemon sent a malformed ready line: {line[:200]!r}")
    # Lost the race for the pid lock (the daemon says so, or died silently with the conflict exit
    # code or not at all yet): the winner is coming up. Poll for it with a short deadline.
    lost_race = code == DaemonRunningError.code or (
        ready is None and exit_code in (None, int(ExitCode.CONFLICT))
    )
    if lost_race and _poll_running(client, min(deadline, time.monotonic() + _RACE_POLL_SECONDS)):
        return
    if isinstance(code, str):
        assert ready is not None
        raise from_code(code, str(ready.get("message") or code), hint=f"see the daemon log: {log}")
    raise LmsError(
        f"the daemon failed to start (exit code {exit_code})",
        hint=f"see its log: {log}",
    )


def _parse_ready(line: str) -> dict[str, Any] | None:
    try:
        ready = json.loads(line) if line else None
    except json.JSONDecodeError:
        return None
    return ready if isinstance(ready, dict) else None


def _poll_running(client: ControlClient, deadline: float) -> bool:
    """Poll, with a deadline, until some daemon answers on the socket."""
    while True:
        try:
            client.status(check_version=False)
            return True
        except DaemonNotRunningError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)


def _read_ready_line(fd: int, deadline: float) -> str | None:
    """The first line written to ``fd``: '' on EOF without a line, None on timeout."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode("utf-8", "replace").strip()
        chunks.append(chunk)
        if b"\n" in chunk:
            return b"".join(chunks).split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _reap(pid: int, deadline: float) -> int | None:
    """Collect a child daemon that is exiting: its exit code, or None if it lingers."""
    limit = min(deadline, time.monotonic() + 5.0)
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= limit:
            return None
        time.sleep(POLL_INTERVAL)
