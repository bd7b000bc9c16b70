"""``lms token``, ``lms auth`` and ``lms config`` with ``auth.registry_file`` (docs/GATES.md)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lms import paths
from lms.auth import audit, registry
from lms.cli import app

pytestmark = pytest.mark.usefixtures("lms_home")

KEY = "auth.registry_file"


@pytest.fixture
def shared() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="lmsshared"))
    try:
        yield folder / "tokens.toml"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_token_create_writes_the_configured_file(runner: CliRunner, shared: Path) -> None:
    done = runner.invoke(app, ["config", "set", KEY, str(shared)])
    assert done.exit_code == 0, done.stderr
    created = runner.invoke(app, ["token", "create", "ci", "--quiet"])
    assert created.exit_code == 0, created.stderr
    token = created.stdout.strip()
    state = registry.read(shared)
    assert [r.name for r in state.records] == ["ci"]
    assert oct(shared.stat().st_mode & 0o777) == "0o600"
    assert not paths.tokens_file().exists()
    assert token.split(":")[1] not in shared.read_text()

    listed = runner.invoke(app, ["token", "list", "--json"])
    assert [t["name"] for t in json.loads(listed.stdout)] == ["ci"]
    edited = runner.invoke(app, ["token", "edit", "ci", "--rpm", "5"])
    assert edited.exit_code == 0, edited.stderr
    assert registry.read(shared).records[0].rpm == 5
    removed = runner.invoke(app, ["token", "rm", "ci", "--yes"])
    assert removed.exit_code == 0, removed.stderr
    assert registry.read(shared).records == ()
    # The change of the setting and each token change are in this host's audit log.
    events = [e["event"] for e in audit.read()]
    assert "token_created" in events and "token_removed" in events
    assert any(e.get("key") == KEY for e in audit.read()), audit.read()


def test_an_unset_setting_keeps_tokens_toml(runner: CliRunner, shared: Path) -> None:
    created = runner.invoke(app, ["token", "create", "ci", "--quiet"])
    assert created.exit_code == 0, created.stderr
    assert [r.name for r in registry.read(paths.tokens_file()).records] == ["ci"]
    assert not shared.exists()
    doc = json.loads(runner.invoke(app, ["auth", "status", "--json"]).stdout)
    assert doc["registry"]["path"] == str(paths.tokens_file())


def test_auth_status_shows_the_configured_registry(runner: CliRunner, shared: Path) -> None:
    runner.invoke(app, ["config", "set", KEY, str(shared)])
    runner.invoke(app, ["token", "create", "ci", "--quiet"])
    doc = json.loads(runner.invoke(app, ["auth", "status", "--json"]).stdout)
    assert doc["daemon_running"] is False
    assert doc["registry"]["path"] == str(shared)
    assert doc["registry"]["healthy"] is True and doc["registry"]["tokens"] == 1
    result = runner.invoke(app, ["auth", "status"])
    assert result.exit_code == 0, result.stderr
    assert f"1 token (generation 1) in {shared}" in result.stdout.replace("\n", " ")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tokens.toml", "must be an absolute path"),
        ("/no/such/folder/tokens.toml", "is not a folder"),
    ],
)
def test_config_set_refuses_a_bad_path(runner: CliRunner, value: str, message: str) -> None:
    result = runner.invoke(app, ["config", "set", KEY, value])
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert not paths.config_file().exists()


def test_token_commands_refuse_a_missing_folder(runner: CliRunner, shared: Path) -> None:
    runner.invoke(app, ["config", "set", KEY, str(shared)])
    shutil.rmtree(shared.parent)  # the shared filesystem is not mounted
    result = runner.invoke(app, ["token", "create", "ci", "--quiet"])
    assert result.exit_code == 1, result.stderr
    assert "does not exist" in result.stderr
    assert result.stdout == ""
    assert not shared.parent.exists()
    status = runner.invoke(app, ["auth", "status"])
    assert status.exit_code == 1
    assert "the token registry is broken" in status.stdout


def test_a_broken_config_toml_stops_token_commands(runner: CliRunner) -> None:
    paths.ensure_dir(paths.config_dir())
    paths.config_file().write_text("[auth\n")
    result = runner.invoke(app, ["token", "list"])
    assert result.exit_code == 1
    assert str(paths.config_file()) in result.stderr
    doc = json.loads(runner.invoke(app, ["auth", "status", "--json"]).stdout)
    assert doc["config_healthy"] is False
    assert doc["registry"]["healthy"] is False and doc["registry"]["path"] is None
