"""``lms daemon`` and ``lms server`` against no daemon and against a FakeControlServer."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_control import FakeControlServer, server_doc
from typer.testing import CliRunner

import lms
from lms.cli import app

pytestmark = pytest.mark.usefixtures("lms_home")


# --- no daemon -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["daemon", "status"],
        ["daemon", "down"],
        ["server", "status"],
        ["server", "stop"],
    ],
)
def test_status_and_stop_commands_never_start_a_daemon(
    runner: CliRunner, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_spawn(*a: Any, **k: Any) -> int:
        raise AssertionError("started a daemon")

    monkeypatch.setattr(os, "posix_spawn", no_spawn)
    result = runner.invoke(app, args)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert "not running" in result.stderr


def test_daemon_status_json_when_not_running(runner: CliRunner) -> None:
    result = runner.invoke(app, ["daemon", "status", "--json"])
    assert result.exit_code == 3
    assert json.loads(result.stdout) == {"status": "not-running"}


def test_server_status_json_when_no_daemon(runner: CliRunner) -> None:
    result = runner.invoke(app, ["server", "status", "--json"])
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert doc["running"] is False
    assert doc["daemon_running"] is False


# --- daemon, fake -------------------------------------------------------------------------------


def test_daemon_status_shows_pid_version_socket_uptime(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    result = runner.invoke(app, ["daemon", "status"])
    assert result.exit_code == 0, result.stderr
    assert f"running (pid {os.getpid()})" in result.stdout
    assert f"version: {lms.__version__}" in result.stdout
    assert f"socket:  {fake_daemon.socket_path}" in result.stdout
    assert "uptime:  1h 2m" in result.stdout
    assert "server:  not running" in result.stdout
    assert result.stderr == ""

    doc = json.loads(runner.invoke(app, ["daemon", "status", "--json"]).stdout)
    assert doc["status"] == "running"
    assert doc["pid"] == os.getpid()
    assert doc["version"] == doc["cli_version"] == lms.__version__
    assert doc["server"]["running"] is False


def test_daemon_status_warns_about_another_version(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    fake_daemon.version = "9.9.9"
    result = runner.invoke(app, ["daemon", "status"])
    assert result.exit_code == 0
    assert "version: 9.9.9" in result.stdout
    assert "lms daemon down && lms daemon up" in result.stderr


def test_daemon_up_when_running_says_so(runner: CliRunner, fake_daemon: FakeControlServer) -> None:
    result = runner.invoke(app, ["daemon", "up"])
    assert result.exit_code == 0
    assert f"already running (pid {os.getpid()})" in result.stderr
    doc = json.loads(runner.invoke(app, ["daemon", "up", "--json"]).stdout)
    assert (doc["status"], doc["started"]) == ("running", False)


def test_commands_refuse_a_daemon_of_another_version(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    fake_daemon.version = "9.9.9"
    result = runner.invoke(app, ["daemon", "up"])
    assert result.exit_code == 1
    assert "9.9.9" in result.stderr and lms.__version__ in result.stderr
    assert "hint: restart it: lms daemon down && lms daemon up" in result.stderr


def test_daemon_down_asks_the_daemon_to_exit(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    fake_daemon.version = "0.0.1"  # stopping works across versions: that is how upgrades end
    fake_daemon.route("POST", "/shutdown", (200, {"ok": True}))
    result = runner.invoke(app, ["daemon", "down"])
    assert result.exit_code == 0, result.stderr
    assert ("POST", "/shutdown", {}) in fake_daemon.requests
    assert f"daemon stopped (pid {os.getpid()})" in result.stderr


# --- server, fake -------------------------------------------------------------------------------


def _serve_start(fake: FakeControlServer) -> None:
    def start(body: Any) -> tuple[int, Any]:
        fake.server = server_doc(running=True, port=body.get("port", 1234))
        fake.server["host"] = body.get("bind", "127.0.0.1")
        return 200, fake.server

    fake.route("POST", "/server/start", start)


def test_server_start_uses_the_settings_and_prints_the_url(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    _serve_start(fake_daemon)
    assert runner.invoke(app, ["config", "set", "server.port", "5678"]).exit_code == 0
    result = runner.invoke(app, ["server", "start"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "http://127.0.0.1:5678\n"
    assert "server started (authentication off" in result.stderr
    assert "warning" not in result.stderr
    assert ("POST", "/server/start", {"port": 5678, "bind": "127.0.0.1"}) in fake_daemon.requests


def test_server_start_flags_override_the_settings(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    _serve_start(fake_daemon)
    result = runner.invoke(app, ["server", "start", "--port", "4000", "--cors"])
    assert result.exit_code == 0, result.stderr
    body = {"port": 4000, "bind": "127.0.0.1", "cors": True}
    assert ("POST", "/server/start", body) in fake_daemon.requests


def test_server_start_on_the_network_warns_loudly(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    _serve_start(fake_daemon)
    result = runner.invoke(app, ["server", "start", "--bind", "0.0.0.0"])
    assert result.exit_code == 0, result.stderr
    assert "warning: the server accepts connections from the network" in result.stderr
    assert "authentication is OFF" in result.stderr
    assert "clear text" in result.stderr


def test_server_start_port_in_use_exits_6(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    fake_daemon.error("POST", "/server/start", 409, "port_in_use", "port 1234 is in use")
    result = runner.invoke(app, ["server", "start"])
    assert result.exit_code == 6
    assert "lms: port 1234 is in use" in result.stderr


@pytest.mark.parametrize(
    "args", [["--port", "70000"], ["--port", "x"], ["--bind", "not-an-address"]]
)
def test_server_start_bad_flags_exit_2(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(app, ["server", "start", *args])
    assert result.exit_code == 2


def test_server_start_foreground_execs_the_daemon(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer

    calls: list[tuple[str, list[str]]] = []

    def execv(path: str, argv: list[str]) -> None:
        calls.append((path, argv))
        raise typer.Exit(0)

    monkeypatch.setattr(os, "execv", execv)
    result = runner.invoke(app, ["server", "start", "--foreground", "--port", "4321", "--cors"])
    assert result.exit_code == 0, result.stderr
    argv = [sys.executable, "-m", "lms.daemon", "--serve", "--port", "4321"]
    argv += ["--bind", "127.0.0.1", "--cors"]
    assert calls == [(sys.executable, argv)]


def test_server_start_foreground_refuses_when_a_daemon_runs(
    runner: CliRunner, fake_daemon: FakeControlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def execv(path: str, argv: list[str]) -> None:
        raise AssertionError("exec'd a second daemon")

    monkeypatch.setattr(os, "execv", execv)
    result = runner.invoke(app, ["server", "start", "--foreground"])
    assert result.exit_code == 6
    assert "lms daemon down" in result.stderr


def test_server_status_and_stop(runner: CliRunner, fake_daemon: FakeControlServer) -> None:
    not_running = runner.invoke(app, ["server", "status"])
    assert not_running.exit_code == 3
    assert "the server is not running" in not_running.stderr

    fake_daemon.server = server_doc(running=True, port=1234)
    running = runner.invoke(app, ["server", "status"])
    assert running.exit_code == 0
    assert running.stdout == (
        "The server is running on http://127.0.0.1:1234 (authentication off).\n"
    )
    doc = json.loads(runner.invoke(app, ["server", "status", "--json"]).stdout)
    assert (doc["running"], doc["port"], doc["daemon_running"]) == (True, 1234, True)

    fake_daemon.route("POST", "/server/stop", (200, server_doc()))
    stopped = runner.invoke(app, ["server", "stop"])
    assert stopped.exit_code == 0
    assert "server stopped (it was on http://127.0.0.1:1234)" in stopped.stderr


def test_server_stop_when_stopped_exits_3(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    fake_daemon.error(
        "POST", "/server/stop", 503, "server_not_running", "the server is not running"
    )
    result = runner.invoke(app, ["server", "stop"])
    assert result.exit_code == 3
    assert "lms: the server is not running" in result.stderr


def test_server_start_tls_files_are_sent_as_absolute_paths(
    runner: CliRunner,
    fake_daemon: FakeControlServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _serve_start(fake_daemon)
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["server", "start", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]
    )
    assert result.exit_code == 0, result.stderr
    body = {
        "port": 1234,
        "bind": "127.0.0.1",
        "tls_cert": str(tmp_path / "cert.pem"),
        "tls_key": str(tmp_path / "key.pem"),
    }
    assert ("POST", "/server/start", body) in fake_daemon.requests


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "cert.pem"], "go together"),
        (["--tls-cert", "cert.pem", "--tls-key", "missing.pem"], "no such file"),
    ],
)
def test_server_start_bad_tls_flags_exit_2(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    (tmp_path / "cert.pem").write_text("cert")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["server", "start", *args])
    assert result.exit_code == 2
    assert message in result.stderr
