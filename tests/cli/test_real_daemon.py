"""The CLI against the real daemon (``python -m lms.daemon``): lifecycle and server commands.

No model is loaded here; model commands against the real engine belong to the e2e tests.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from typer.testing import CliRunner

import lms
from lms import client as control
from lms import paths
from lms.cli import app
from lms.protocol import DaemonStatus

pytestmark = pytest.mark.usefixtures("lms_home")


@pytest.mark.model
@pytest.mark.usefixtures("real_daemon_available", "shared_models")
def test_daemon_up_status_down_with_the_real_daemon(runner: CliRunner) -> None:
    up = runner.invoke(app, ["daemon", "up", "--json"])
    assert up.exit_code == 0, up.stderr
    started = json.loads(up.stdout)
    pid = started["pid"]
    try:
        assert started["started"] is True
        assert "starting the daemon..." in up.stderr
        again = runner.invoke(app, ["daemon", "up"])
        assert again.exit_code == 0
        assert f"already running (pid {pid})" in again.stderr

        status = runner.invoke(app, ["daemon", "status"])
        assert status.exit_code == 0
        assert f"running (pid {pid})" in status.stdout
        assert f"version: {lms.__version__}" in status.stdout
        assert str(paths.socket_path()) in status.stdout

        down = runner.invoke(app, ["daemon", "down"])
        assert down.exit_code == 0, down.stderr
        assert not control.is_pid_lock_held()
        assert not paths.socket_path().exists()
        after = runner.invoke(app, ["daemon", "status"])
        assert after.exit_code == 3
    finally:
        if control.try_status() is not None:
            control.ControlClient().shutdown(wait=True)
        _reap_soon(pid)


def _reap_soon(pid: int, timeout: float = 2.0) -> None:
    """Collect the exited daemon (our child) if it exits soon; else leave it to finish alone.

    After releasing its lock the daemon may still finish background work (such as assembling
    the default model) before its process ends; this test does not wait for that.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.05)


@pytest.mark.model
def test_server_start_status_stop_with_the_real_daemon(
    runner: CliRunner, running_daemon: DaemonStatus
) -> None:
    start = runner.invoke(app, ["server", "start", "--port", "0"])
    assert start.exit_code == 0, start.stderr
    url = start.stdout.strip()
    assert url.startswith("http://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])
    assert port > 0

    status = runner.invoke(app, ["server", "status", "--json"])
    assert status.exit_code == 0
    doc = json.loads(status.stdout)
    assert (doc["running"], doc["port"], doc["url"]) == (True, port, url)

    stop = runner.invoke(app, ["server", "stop"])
    assert stop.exit_code == 0, stop.stderr
    assert runner.invoke(app, ["server", "status"]).exit_code == 3
    assert runner.invoke(app, ["server", "stop"]).exit_code == 3


@pytest.mark.model
def test_unknown_instance_with_the_real_daemon(
    runner: CliRunner, running_daemon: DaemonStatus
) -> None:
    result = runner.invoke(app, ["unload", "no-such-instance"])
    assert result.exit_code == 5, result.stderr
    assert result.stderr.startswith("lms: ")
    ps = runner.invoke(app, ["ps", "--json"])
    assert ps.exit_code == 0
    assert json.loads(ps.stdout) == []
