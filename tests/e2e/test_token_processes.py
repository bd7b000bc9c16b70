"""The real `lms token` command in processes: concurrent creation, and the daemon enforcing what
the CLI writes (revocation, rotation, permission edits) from the very next request."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LMS, Home

from lms import paths
from lms.auth import audit, refusals, registry
from lms.auth.verifier import TokenVerifier

TOKEN_LINE = re.compile(r"sk-lm-[A-Za-z0-9]{8}:[A-Za-z0-9]{20}\n")


@pytest.fixture
def bare_home() -> Iterator[Path]:
    """An LMS_HOME without models or daemon (token commands only edit files)."""
    root = Path(tempfile.mkdtemp(prefix="lms"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_twenty_concurrent_creates_make_twenty_valid_tokens(bare_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
    env["LMS_HOME"] = str(bare_home)
    procs = [
        subprocess.Popen(
            [LMS, "token", "create", f"ci-{i:02d}", "--quiet"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert TOKEN_LINE.fullmatch(out), out
        assert err == ""
    created = [out.strip() for out, _ in outputs]
    assert len(set(created)) == 20

    tokens_file = bare_home / "config" / "tokens.toml"
    state = registry.read(tokens_file)  # parses and validates the whole file
    assert state.generation == 20
    assert sorted(r.name for r in state.records) == [f"ci-{i:02d}" for i in range(20)]
    assert len({r.id for r in state.records}) == 20
    assert oct(tokens_file.stat().st_mode & 0o777) == "0o600"
    verifier = TokenVerifier(tokens_file)
    for i, token in enumerate(created):
        assert verifier.authenticate(token).name == f"ci-{i:02d}"
    assert list(tokens_file.parent.glob(".tokens.toml.*.tmp")) == []

    audit_log = bare_home / "data" / "audit.jsonl"
    entries = audit.read(path=audit_log)
    assert sorted(e["name"] for e in entries) == [f"ci-{i:02d}" for i in range(20)]
    text = audit_log.read_text() + tokens_file.read_text()
    for token in created:
        assert token.split(":")[1] not in text


# --- against the real daemon and server -------------------------------------------------------


def get(url: str, token: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return _send(urllib.request.Request(url, headers=headers))


def post(url: str, token: str | None, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return _send(urllib.request.Request(url, json.dumps(body).encode(), headers))


def _send(request: urllib.request.Request) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def error_code(body: dict[str, object]) -> object:
    error = body.get("error")
    return error.get("code") if isinstance(error, dict) else None


def create_token(home: Home, name: str, *args: str) -> str:
    done = home.lms("token", "create", name, "--quiet", *args)
    assert done.returncode == 0, done.stderr
    assert TOKEN_LINE.fullmatch(done.stdout)
    return done.stdout.strip()


@contextlib.contextmanager
def daemon_down_afterwards(home: Home) -> Iterator[None]:
    try:
        yield
    finally:
        # The home fixture stops a daemon that `down` could not (by its pid, never by name).
        down = home.lms("daemon", "down")
        assert down.returncode in (0, 3), down.stderr


@pytest.mark.model
def test_the_daemon_enforces_token_changes_on_the_next_request(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMS_HOME", str(home.root))
    created: list[str] = []
    assert home.lms("auth", "require", "on").returncode == 0
    with daemon_down_afterwards(home):
        start = home.lms("server", "start", "--port", "0")
        assert start.returncode == 0, start.stderr
        url = start.stdout.strip()
        assert url == home.server_url()
        models = f"{url}/v1/models"

        status, body = get(models, None)
        assert (status, error_code(body)) == (401, "missing_api_key")

        token = create_token(home, "e2e")
        created.append(token)
        status, body = get(models, token)
        assert status == 200, body
        assert body["object"] == "list"

        state = json.loads(home.lms("auth", "status", "--json").stdout)
        assert state["daemon_running"] is True and state["auth_required"] is True
        assert state["registry"]["tokens"] == 1

        # A permission edit applies to the next request (refused before any model loads).
        edit = home.lms("token", "edit", "e2e", "--remove-perm", "inference")
        assert edit.returncode == 0, edit.stderr
        status, body = post(f"{url}/v1/completions", token, {"model": "x", "prompt": "hi"})
        assert (status, error_code(body)) == (403, "insufficient_permissions")

        # Rotation: the old secret fails at once, the new one works.
        rotated = home.lms("token", "rotate", "e2e", "--quiet")
        assert rotated.returncode == 0, rotated.stderr
        new_token = rotated.stdout.strip()
        created.append(new_token)
        status, body = get(models, token)
        assert (status, error_code(body)) == (401, "invalid_api_key")
        assert get(models, new_token)[0] == 200

        # Revocation: the very next request is refused.
        rm = home.lms("token", "rm", "e2e")  # stdin is not a terminal: --yes is required
        assert rm.returncode == 2 and "--yes" in rm.stderr
        assert get(models, new_token)[0] == 200
        rm = home.lms("token", "rm", "e2e", "--yes")
        assert rm.returncode == 0, rm.stderr
        status, body = get(models, new_token)
        assert (status, error_code(body)) == (401, "invalid_api_key")
        assert new_token not in json.dumps(body)

        pid = home.daemon_pid()
        assert pid is not None
        with contextlib.suppress(FileNotFoundError):  # not every platform has /proc
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            assert "sk-lm-" not in cmdline

    logs = {
        path.name: path.read_text(errors="replace")
        for path in (
            paths.daemon_log(),
            paths.audit_log(),
            refusals.log_path(),
            paths.tokens_file(),
        )
        if path.exists()
    }
    assert "audit.jsonl" in logs and "daemon.log" in logs, sorted(logs)
    for name, text in logs.items():
        for token in created:
            assert token not in text, name
            assert token.split(":")[1] not in text, name
    assert "request_refused" not in logs["audit.jsonl"]  # refusals are counted apart
    refused = [json.loads(line)["event"] for line in logs["refusals.jsonl"].splitlines()]
    assert refused.count("request_refused") >= 3
    events = [json.loads(line)["event"] for line in logs["audit.jsonl"].splitlines()]
    assert {"token_created", "token_edited", "token_rotated", "token_removed"} <= set(events)
