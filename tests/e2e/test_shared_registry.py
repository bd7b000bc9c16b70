"""Two real gates (daemons with their own LMS_HOME) sharing one token registry through
``auth.registry_file`` (docs/GATES.md): a token the CLI creates on one is honoured by the other
on its next request, and a revocation is refused there on the next request too."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Home
from test_token_processes import create_token, error_code, get

from lms.auth import registry


def _config(registry_file: Path) -> str:
    return f'[auth]\nrequired = true\nregistry_file = "{registry_file}"\n'


@contextlib.contextmanager
def _gate(models_dir: Path, registry_file: Path) -> Iterator[Home]:
    """An LMS_HOME whose config.toml requires tokens from ``registry_file``; its daemon (if one
    was started) is stopped by pid at the end, and the home removed."""
    root = Path(tempfile.mkdtemp(prefix="lmsg"))
    (root / "data").mkdir(mode=0o700)
    (root / "data" / "models").symlink_to(models_dir, target_is_directory=True)
    (root / "config").mkdir(mode=0o700)
    (root / "config" / "config.toml").write_text(_config(registry_file))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
    env.update(LMS_HOME=str(root), NO_COLOR="1")
    gate = Home(root, env)
    try:
        yield gate
    finally:
        gate.lms("daemon", "down")
        pid = gate.daemon_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (gate.run_dir / "lms.sock").exists():
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="lmsshared"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start(gate: Home) -> str:
    start = gate.lms("server", "start", "--port", "0")
    assert start.returncode == 0, start.stderr
    return start.stdout.strip() + "/v1/models"


@pytest.mark.model  # each daemon checks the default model at start (no inference here)
def test_a_token_created_on_one_gate_is_honoured_and_revoked_on_the_other(
    default_models_dir: Path, shared_dir: Path
) -> None:
    shared = shared_dir / "tokens.toml"
    with _gate(default_models_dir, shared) as a, _gate(default_models_dir, shared) as b:
        models_a, models_b = _start(a), _start(b)
        assert models_a != models_b
        status, body = get(models_b, None)
        assert (status, error_code(body)) == (401, "missing_api_key")

        token = create_token(a, "shared")  # the CLI of gate A's host
        assert [r.name for r in registry.read(shared).records] == ["shared"]
        assert (shared_dir / "tokens.toml.lock").exists()  # the lock lives beside the file
        for home in (a, b):
            assert not (home.root / "config" / "tokens.toml").exists()

        status, body = get(models_b, token)  # gate B's very next request
        assert status == 200, body
        assert body["object"] == "list"
        assert get(models_a, token)[0] == 200

        # Gate B's CLI reads the same registry, and so does its `lms auth status`.
        listed = b.lms("token", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [t["name"] for t in json.loads(listed.stdout)] == ["shared"]
        state = json.loads(b.lms("auth", "status", "--json").stdout)
        assert state["daemon_running"] is True
        assert state["registry"]["path"] == str(shared)
        assert state["registry"]["tokens"] == 1

        rm = a.lms("token", "rm", "shared", "--yes")
        assert rm.returncode == 0, rm.stderr
        status, body = get(models_b, token)
        assert (status, error_code(body)) == (401, "invalid_api_key")
        assert token not in json.dumps(body)
        assert get(models_a, token)[0] == 401


@pytest.mark.model
def test_a_gate_follows_its_config_and_fails_closed_when_the_registry_is_gone(
    default_models_dir: Path, shared_dir: Path
) -> None:
    shared = shared_dir / "tokens.toml"
    with _gate(default_models_dir, shared) as gate:
        models = _start(gate)
        token = create_token(gate, "ci")
        assert get(models, token)[0] == 200

        # The setting now names a registry whose folder is missing (a share not mounted): every
        # request is refused until it is back, and nothing is created in its place.
        missing = shared_dir / "unmounted" / "tokens.toml"
        config_file = gate.root / "config" / "config.toml"
        config_file.write_text(_config(missing))
        status, body = get(models, token)
        assert (status, error_code(body)) == (503, "configuration_broken")
        assert "does not exist" in json.dumps(body)
        create = gate.lms("token", "create", "other", "--quiet")
        assert create.returncode != 0
        assert "does not exist" in create.stderr
        assert not missing.parent.exists()

        config_file.write_text(_config(shared))
        assert get(models, token)[0] == 200
