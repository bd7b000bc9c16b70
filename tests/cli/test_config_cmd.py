"""``lms config``: list, get, set, unset — files only, no daemon."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lms import config, paths
from lms.cli import app

pytestmark = pytest.mark.usefixtures("lms_home")


def test_list_shows_every_setting_with_its_source(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "list"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "SOURCE", "NOTE"]
    assert len(lines) == 1 + len(config.SETTINGS)
    assert lines[1].split()[:3] == ["server.port", "1234", "default"]
    auth = next(line for line in lines if line.startswith("auth.required"))
    assert "security" in auth


def test_list_json_is_one_document_with_stable_keys(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "list", "--json"])
    assert result.exit_code == 0
    docs = json.loads(result.stdout)
    assert [d["key"] for d in docs] == list(config.SETTINGS)
    assert set(docs[0]) == {"key", "value", "default", "source", "security", "env_var", "help"}
    by_key = {d["key"]: d for d in docs}
    assert by_key["server.cors_origins"]["value"] == []
    assert by_key["auth.required"]["security"] is True
    assert by_key["auth.required"]["env_var"] is None
    assert by_key["server.port"]["env_var"] == "LMS_SERVER_PORT"


def test_set_then_get_round_trips_through_config_toml(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "set", "server.port", "5678"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "server.port = 5678" in result.stderr
    assert tomllib.loads(paths.config_file().read_text()) == {"server": {"port": 5678}}

    got = runner.invoke(app, ["config", "get", "server.port"])
    assert got.exit_code == 0
    assert got.stdout == "5678\n"
    doc = json.loads(runner.invoke(app, ["config", "get", "server.port", "--json"]).stdout)
    assert doc["value"] == 5678
    assert doc["source"] == "file"


def test_set_lists_and_booleans(runner: CliRunner) -> None:
    origins = "http://localhost:3000,http://127.0.0.1:8080"
    assert runner.invoke(app, ["config", "set", "server.cors_origins", origins]).exit_code == 0
    assert runner.invoke(app, ["config", "set", "auth.required", "on"]).exit_code == 0
    assert runner.invoke(app, ["config", "get", "server.cors_origins"]).stdout == origins + "\n"
    assert runner.invoke(app, ["config", "get", "auth.required"]).stdout == "true\n"
    assert config.read_file()["server.cors_origins"] == tuple(origins.split(","))


def test_environment_overrides_are_shown_and_warned_about(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMS_SERVER_PORT", "7000")
    doc = json.loads(runner.invoke(app, ["config", "get", "server.port", "--json"]).stdout)
    assert (doc["value"], doc["source"]) == (7000, "env")
    result = runner.invoke(app, ["config", "set", "server.port", "5678"])
    assert result.exit_code == 0
    assert "LMS_SERVER_PORT is set in the environment" in result.stderr


def test_unset_restores_the_default(runner: CliRunner) -> None:
    runner.invoke(app, ["config", "set", "models.ttl", "60"])
    result = runner.invoke(app, ["config", "unset", "models.ttl"])
    assert result.exit_code == 0
    assert "reset to its default (3600)" in result.stderr
    assert runner.invoke(app, ["config", "get", "models.ttl"]).stdout == "3600\n"
    assert "models.ttl" not in config.read_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["config", "set", "server.nope", "1"], "unknown setting 'server.nope'"),
        (["config", "get", "nope"], "unknown setting 'nope'"),
        (["config", "unset", "nope"], "unknown setting 'nope'"),
        (["config", "set", "server.port", "abc"], "must be a whole number"),
        (["config", "set", "server.port", "70000"], "between 0 and 65535"),
        (["config", "set", "server.bind", "example.com"], "must be an IP address"),
        (["config", "set", "auth.required", "maybe"], "must be on or off"),
        (["config", "set", "server.cors_origins", "*"], "'*' is not allowed"),
    ],
)
def test_bad_keys_and_values_exit_2_with_a_clear_message(
    runner: CliRunner, args: list[str], message: str
) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("lms: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not paths.config_file().exists()


def test_a_broken_config_file_is_reported_not_overwritten(
    runner: CliRunner, lms_home: Path
) -> None:
    paths.config_file().parent.mkdir(parents=True, exist_ok=True)
    paths.config_file().write_text("[server\nport = ")
    for args in (["config", "list"], ["config", "set", "server.port", "1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert "is not valid TOML" in result.stderr
    assert paths.config_file().read_text() == "[server\nport = "
