"""lms.client against a FakeControlServer: error rebuilding, versions, not running, peer uid."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import lms
from lms import client as control
from lms import errors, paths
from lms.errors import ExitCode


def _load_fakes() -> ModuleType:
    """tests/cli/fake_control.py, shared with the CLI tests (tests/ is not a package)."""
    if "fake_control" in sys.modules:
        return sys.modules["fake_control"]
    path = Path(__file__).resolve().parents[1] / "cli" / "fake_control.py"
    spec = importlib.util.spec_from_file_location("fake_control", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_control"] = module
    spec.loader.exec_module(module)
    return module


fakes = _load_fakes()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lms"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(short_dir: Path) -> Iterator[Any]:
    server = fakes.FakeControlServer(short_dir / "lms.sock").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(fake: Any) -> control.ControlClient:
    return control.ControlClient(fake.socket_path, timeout=5.0)


def test_status_returns_the_daemon_status(client: control.ControlClient, fake: Any) -> None:
    status = client.status()
    assert status["version"] == lms.__version__
    assert status["pid"] == os.getpid()
    assert status["server"]["running"] is False
    assert fake.requests == [("GET", "/status", None)]


def test_other_version_is_refused_with_both_versions_and_the_restart(
    client: control.ControlClient, fake: Any
) -> None:
    fake.version = "0.0.9"
    with pytest.raises(errors.DaemonVersionError) as caught:
        client.status()
    assert "0.0.9" in caught.value.message
    assert lms.__version__ in caught.value.message
    assert caught.value.hint == "restart it: lms daemon down && lms daemon up"
    # Without the check (daemon down, daemon status), the status still comes back.
    assert client.status(check_version=False)["version"] == "0.0.9"


@pytest.mark.parametrize(
    ("status", "code", "cls", "exit_code"),
    [
        (404, "model_not_found", errors.ModelNotFoundError, ExitCode.NOT_FOUND),
        (404, "instance_not_found", errors.InstanceNotFoundError, ExitCode.NOT_FOUND),
        (409, "port_in_use", errors.PortInUseError, ExitCode.CONFLICT),
        (503, "server_not_running", errors.ServerNotRunningError, ExitCode.NOT_RUNNING),
        (400, "invalid_parameter", errors.InvalidParameterError, ExitCode.USAGE),
    ],
)
def test_daemon_errors_are_rebuilt_from_their_code(
    client: control.ControlClient,
    fake: Any,
    status: int,
    code: str,
    cls: type[errors.LmsError],
    exit_code: ExitCode,
) -> None:
    fake.error("POST", "/instances/load", status, code, "it went wrong", hint="try this")
    with pytest.raises(cls) as caught:
        client.load("some/model")
    assert type(caught.value) is cls
    assert caught.value.message == "it went wrong"
    assert caught.value.hint == "try this"
    assert caught.value.exit_code == exit_code


def test_unknown_error_code_becomes_the_base_error(
    client: control.ControlClient, fake: Any
) -> None:
    fake.error("GET", "/models", 500, "brand_new_code", "something new")
    with pytest.raises(errors.LmsError) as caught:
        client.models()
    assert type(caught.value) is errors.LmsError
    assert caught.value.message == "something new"
    assert caught.value.exit_code == ExitCode.FAILED


def test_error_status_without_envelope_is_reported(
    client: control.ControlClient, fake: Any
) -> None:
    fake.route("GET", "/instances", (502, b"bad gateway"))
    with pytest.raises(errors.LmsError, match="HTTP 502"):
        client.instances()


def test_success_with_a_body_that_is_not_json_is_reported(
    client: control.ControlClient, fake: Any
) -> None:
    fake.route("GET", "/instances", (200, b"<html>"))
    with pytest.raises(errors.LmsError, match="not JSON"):
        client.instances()


def test_missing_socket_means_not_running(short_dir: Path) -> None:
    client = control.ControlClient(short_dir / "lms.sock")
    with pytest.raises(errors.DaemonNotRunningError) as caught:
        client.status()
    assert caught.value.exit_code == ExitCode.NOT_RUNNING
    assert caught.value.hint == "start it with: lms daemon up"
    assert control.try_status(client) is None


def test_stale_socket_file_means_not_running(short_dir: Path) -> None:
    # What a daemon killed with -9 leaves behind: a socket file nobody listens on.
    path = short_dir / "lms.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert path.exists()
    with pytest.raises(errors.DaemonNotRunningError):
        control.ControlClient(path).status()


def test_socket_path_over_the_limit_is_refused(short_dir: Path) -> None:
    long_path = short_dir / ("x" * 120) / "lms.sock"
    with pytest.raises(errors.UnsafePathError, match="longer than"):
        control.ControlClient(long_path).status()


def test_peer_uid_reports_the_other_end() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert control.peer_uid(left) == os.geteuid()


def test_check_peer_uid_refuses_another_user(short_dir: Path) -> None:
    path = short_dir / "lms.sock"
    control.check_peer_uid(os.geteuid(), path)
    with pytest.raises(errors.UnsafePathError) as caught:
        control.check_peer_uid(os.geteuid() + 1, path)
    assert f"uid {os.geteuid() + 1}" in caught.value.message
    assert "refusing" in caught.value.message


def test_check_peer_uid_falls_back_to_the_socket_owner(short_dir: Path) -> None:
    path = short_dir / "lms.sock"
    path.write_text("")
    control.check_peer_uid(None, path)  # our own file: accepted
    with pytest.raises(errors.UnsafePathError):
        control.check_peer_uid(None, path, expected=os.geteuid() + 1)


def test_a_daemon_of_another_uid_is_refused_before_any_request(
    client: control.ControlClient, fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "peer_uid", lambda sock: os.geteuid() + 1)
    with pytest.raises(errors.UnsafePathError, match="refusing to talk to it"):
        client.status()
    assert fake.requests == []


def test_request_bodies_carry_only_the_given_fields(
    client: control.ControlClient, fake: Any
) -> None:
    fake.route("POST", "/instances/load", (200, fakes.instance_doc("m")))
    fake.route("POST", "/instances/unload", (200, {"unloaded": ["m"]}))
    fake.route("POST", "/server/start", (200, fakes.server_doc(running=True)))
    client.load("pub/m")
    client.load("pub/m", context_length=2048, ttl=60, identifier="mine")
    assert client.unload("m") == ["m"]
    client.unload(all=True)
    client.server_start(port=5678, bind="127.0.0.1")
    client.server_start(cors=True)
    assert [body for _, _, body in fake.requests] == [
        {"model": "pub/m"},
        {"model": "pub/m", "context_length": 2048, "ttl": 60, "identifier": "mine"},
        {"identifier": "m"},
        {"all": True},
        {"port": 5678, "bind": "127.0.0.1"},
        {"cors": True},
    ]


def test_unload_needs_exactly_one_target(client: control.ControlClient) -> None:
    with pytest.raises(ValueError):
        client.unload()
    with pytest.raises(ValueError):
        client.unload("m", all=True)


def test_a_silent_daemon_times_out_with_a_clear_error(short_dir: Path, fake: Any) -> None:
    release = threading.Event()

    def stuck(_body: Any) -> tuple[int, Any]:
        release.wait(5)
        return 200, {"instances": []}

    fake.route("GET", "/instances", stuck)
    try:
        with pytest.raises(errors.LmsError, match="did not answer GET /instances"):
            control.ControlClient(fake.socket_path, timeout=0.2).instances()
    finally:
        release.set()


def test_pid_lock_probe(short_dir: Path) -> None:
    import fcntl

    pid_file = short_dir / "lms.pid"
    assert control.is_pid_lock_held(pid_file) is False  # no file
    assert not pid_file.exists()  # the probe never creates it
    fd = os.open(pid_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert control.is_pid_lock_held(pid_file) is False
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert control.is_pid_lock_held(pid_file) is True
        with pytest.raises(errors.LmsError, match="did not exit"):
            control.wait_for_exit(timeout=0.1, pid_file=pid_file)
    finally:
        os.close(fd)
    control.wait_for_exit(timeout=0.1, pid_file=pid_file)


def test_default_socket_comes_from_paths(monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    monkeypatch.setenv("LMS_HOME", str(short_dir))
    assert control.ControlClient().socket_path == paths.socket_path()
