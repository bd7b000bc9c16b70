"""Fixtures of the CLI tests: a private LMS_HOME, a CliRunner, fake and real daemons."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_control import FakeControlServer
from typer.testing import CliRunner

from lms import client as control
from lms import config, paths
from lms.errors import DaemonNotRunningError
from lms.protocol import DaemonStatus


@pytest.fixture
def lms_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh LMS_HOME, short enough for a Unix socket path (pytest's tmp_path is not).

    Every ``LMS_*`` setting variable of the outer environment is removed, so that the tests see
    the defaults.
    """
    home = Path(tempfile.mkdtemp(prefix="lms"))
    monkeypatch.setenv("LMS_HOME", str(home))
    for spec in config.SETTINGS.values():
        if spec.env_var:
            monkeypatch.delenv(spec.env_var, raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def fake_daemon(lms_home: Path) -> Iterator[FakeControlServer]:
    """A FakeControlServer on the control socket of ``lms_home`` (canned answers, plumbing only)."""
    paths.ensure_private_dir(paths.runtime_dir())
    fake = FakeControlServer(paths.socket_path()).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def shared_models(lms_home: Path, default_models_dir: Path) -> Path:
    """Point ``lms_home``'s models folder at the session's default-model folder.

    A daemon assembles the default model (a 253 MB copy and its sha256) in a fresh models folder;
    linking the session's verified copy spares every daemon test that work. Read-only use.
    """
    paths.ensure_dir(paths.data_dir())
    paths.models_dir().symlink_to(default_models_dir, target_is_directory=True)
    return paths.models_dir()


@pytest.fixture
def real_daemon_available() -> None:
    """Skip, saying why, while ``lms.daemon`` does not exist."""
    if importlib.util.find_spec("lms.daemon.__main__") is None:
        pytest.skip("lms.daemon is not written yet: no real daemon to test against")


@pytest.fixture
def running_daemon(
    lms_home: Path, shared_models: Path, real_daemon_available: None
) -> Iterator[DaemonStatus]:
    """The real daemon (``python -m lms.daemon``) in a subprocess, for ``lms_home``.

    Started the way ``ensure_daemon`` starts it (``--ready-fd``), stopped with POST /shutdown.
    """
    paths.ensure_private_dir(paths.runtime_dir())
    paths.ensure_dir(paths.log_dir())
    read_end, write_end = os.pipe()
    with open(paths.daemon_log(), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lms.daemon", "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            pass_fds=(write_end,),
        )
    os.close(write_end)
    try:
        line = _read_line(read_end, deadline=time.monotonic() + 30)
    finally:
        os.close(read_end)
    try:
        ready = json.loads(line) if line else {}
        if not ready.get("ok"):
            log_text = paths.daemon_log().read_text(errors="replace")[-2000:]
            pytest.fail(f"the daemon did not start: {line!r}\n{log_text}")
        yield control.ControlClient().status()
    finally:
        with contextlib.suppress(DaemonNotRunningError):  # a test may have stopped it
            control.ControlClient().shutdown(wait=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_line(fd: int, *, deadline: float) -> str:
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()
