"""The root group: help, version, and the one place where errors become exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fake_control import FakeControlServer, server_doc
from typer.testing import CliRunner

import lms
import lms.config
from lms.cli import app
from lms.errors import ModelNotFoundError

pytestmark = pytest.mark.usefixtures("lms_home")


def test_no_arguments_prints_help_and_the_state(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 0
    assert "Usage: lms" in result.stdout
    assert "config" in result.stdout and "server" in result.stdout
    assert "Daemon: not running" in result.stdout
    assert "Server: not running" in result.stdout


def test_no_arguments_with_a_daemon_shows_it(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    fake_daemon.server = server_doc(running=True, port=4321, auth=True)
    result = runner.invoke(app, [])
    assert result.exit_code == 0
    assert f"Daemon: running (pid {fake_daemon.status_doc()['pid']}" in result.stdout
    assert "Server: running on http://127.0.0.1:4321 (authentication on)" in result.stdout


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"lms {lms.__version__}\n"


def test_unknown_command_is_bad_usage(runner: CliRunner) -> None:
    result = runner.invoke(app, ["frobnicate"])
    assert result.exit_code == 2
    assert result.stdout == ""


def test_lms_error_prints_message_and_hint_and_exits_with_its_code(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ModelNotFoundError("no such thing", hint="look elsewhere")

    monkeypatch.setattr(lms.config, "read_file", broken)
    result = runner.invoke(app, ["config", "list"])
    assert result.exit_code == 5
    assert result.stdout == ""
    assert result.stderr == "lms: no such thing\nhint: look elsewhere\n"


def test_unexpected_exception_is_an_internal_error_without_traceback(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(lms.config, "read_file", broken)
    result = runner.invoke(app, ["config", "list"])
    assert result.exit_code == 1
    assert "lms: internal error: RuntimeError: boom" in result.stderr
    assert "--debug" in result.stderr
    assert "Traceback" not in result.stderr

    debug = runner.invoke(app, ["--debug", "config", "list"])
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr
    assert "RuntimeError: boom" in debug.stderr


def test_ctrl_c_exits_130(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(lms.config, "read_file", interrupted)
    result = runner.invoke(app, ["config", "list"])
    assert result.exit_code == 130
    assert "lms: interrupted" in result.stderr


def test_unsafe_runtime_dir_is_refused_with_the_reason(runner: CliRunner, lms_home: Path) -> None:
    runtime = lms_home / "run"
    runtime.mkdir()
    runtime.chmod(0o755)
    result = runner.invoke(app, ["ps"])
    assert result.exit_code == 1
    assert "mode 0755" in result.stderr
    assert f"chmod 700 {runtime}" in result.stderr
