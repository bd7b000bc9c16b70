"""lms.starter.ensure_daemon: spawning, the ready line, racing CLIs (with a stand-in daemon)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lms import client as control
from lms import errors, paths, starter
from lms.errors import ExitCode

FAKE_DAEMON = Path(__file__).resolve().parents[1] / "cli" / "fake_daemon.py"


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lms"))
    monkeypatch.setenv("LMS_HOME", str(path))
    monkeypatch.setenv("FAKE_DAEMON_SPAWNS", str(path / "spawns"))
    try:
        yield path
    finally:
        _stop_daemon()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_daemon_command(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    def command(extra: Sequence[str] = ()) -> list[str]:
        return [sys.executable, str(FAKE_DAEMON), *extra]

    monkeypatch.setattr(starter, "daemon_command", command)


def _stop_daemon() -> None:
    status = control.try_status()
    if status is None:
        return
    control.ControlClient().shutdown(wait=True)
    _reap(status["pid"])


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # not our child
        os.waitpid(pid, 0)


def _spawns(home: Path) -> list[str]:
    path = home / "spawns"
    return path.read_text().split() if path.exists() else []


@pytest.mark.usefixtures("fake_daemon_command")
def test_starts_a_daemon_once_then_finds_it_running(home: Path) -> None:
    messages: list[str] = []
    first = starter.ensure_daemon(announce=messages.append)
    assert first.started is True
    assert messages == ["starting the daemon..."]
    assert first.status["pid"] != os.getpid()
    second = starter.ensure_daemon(announce=messages.append)
    assert second.started is False
    assert second.status["pid"] == first.status["pid"]
    assert messages == ["starting the daemon..."]
    assert _spawns(home) == [str(first.status["pid"])]
    # The daemon runs in its own session, detached from this terminal.
    assert os.getsid(first.status["pid"]) == first.status["pid"]
    # down: returns once the pid lock is free, so that an `up` right after cannot collide.
    control.ControlClient().shutdown(wait=True)
    assert not control.is_pid_lock_held()
    _reap(first.status["pid"])


@pytest.mark.usefixtures("fake_daemon_command")
def test_racing_clis_end_on_one_daemon(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_DAEMON_DELAY", "0.3")
    results: list[starter.DaemonStart] = []
    failures: list[BaseException] = []

    def start() -> None:
        try:
            results.append(starter.ensure_daemon())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert len(results) == 3
    assert len(_spawns(home)) == 1
    assert len({r.status["pid"] for r in results}) == 1
    assert sorted(r.started for r in results) == [False, False, True]


@pytest.mark.usefixtures("fake_daemon_command")
def test_a_daemon_that_loses_the_lock_race_connects_to_the_winner(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The winner holds the pid lock but listens only a moment later; the daemon ensure_daemon
    # spawns finds the lock taken, says so on its ready line, and the client polls the socket.
    paths.ensure_private_dir(paths.runtime_dir())
    monkeypatch.setenv("FAKE_DAEMON_DELAY", "0.5")
    winner = subprocess.Popen([sys.executable, str(FAKE_DAEMON)])
    try:
        deadline = time.monotonic() + 10
        while not control.is_pid_lock_held():
            assert time.monotonic() < deadline, "the winner never took the lock"
            time.sleep(0.02)
        outcome = starter.ensure_daemon()
        assert outcome.status["pid"] == winner.pid
        assert len(_spawns(home)) == 2
    finally:
        if control.try_status() is not None:
            control.ControlClient().shutdown(wait=True)
        winner.wait(timeout=10)


@pytest.mark.usefixtures("fake_daemon_command")
def test_a_start_failure_is_rebuilt_from_the_ready_line(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DAEMON_MODE", "fail")
    with pytest.raises(errors.PortInUseError) as caught:
        starter.ensure_daemon()
    assert caught.value.message == "port 1234 is in use"
    assert caught.value.exit_code == ExitCode.CONFLICT
    assert str(paths.daemon_log()) in (caught.value.hint or "")


@pytest.mark.usefixtures("fake_daemon_command")
def test_a_daemon_dying_without_a_word_is_reported(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DAEMON_MODE", "die")
    started = time.monotonic()
    with pytest.raises(errors.LmsError, match=r"failed to start \(exit code 7\)") as caught:
        starter.ensure_daemon()
    assert str(paths.daemon_log()) in (caught.value.hint or "")
    # Exit 7 is not a lost lock race: no reason to wait for another daemon.
    assert time.monotonic() - started < 3


def test_an_unsafe_runtime_dir_is_refused_before_spawning(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = paths.runtime_dir()
    runtime.mkdir(parents=True)
    runtime.chmod(0o755)

    def no_spawn(*args: object, **kwargs: object) -> int:
        raise AssertionError("spawned a daemon in an unsafe directory")

    monkeypatch.setattr(os, "posix_spawn", no_spawn)
    with pytest.raises(errors.UnsafePathError, match="0755"):
        starter.ensure_daemon()
