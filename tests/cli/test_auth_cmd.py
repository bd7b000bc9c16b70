"""``lms auth require | status | audit`` and the audit of ``lms config set`` of security keys."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from lms import client as control
from lms import paths
from lms.auth import audit, refusals
from lms.auth.refusals import RefusalKey, RefusalLog, RefusalRecorder
from lms.auth.registry import Registry
from lms.cli import app
from lms.protocol import DaemonStatus

pytestmark = pytest.mark.usefixtures("lms_home")


def events() -> list[tuple[str, str | None, object, object]]:
    return [(e["event"], e.get("key"), e.get("old"), e.get("new")) for e in audit.read()]


# --- require ----------------------------------------------------------------------------------


def test_require_on_writes_the_setting_audits_it_and_hints_at_a_token(runner: CliRunner) -> None:
    result = runner.invoke(app, ["auth", "require", "on"])
    assert result.exit_code == 0, result.stderr
    assert tomllib.loads(paths.config_file().read_text()) == {"auth": {"required": True}}
    assert "authentication is ON" in result.stderr
    assert "lms token create" in result.stderr  # no token yet: say how to make one
    assert events() == [("auth_setting_changed", "auth.required", False, True)]

    off = runner.invoke(app, ["auth", "require", "OFF"])
    assert off.exit_code == 0, off.stderr
    assert "authentication is OFF" in off.stderr
    assert tomllib.loads(paths.config_file().read_text()) == {"auth": {"required": False}}
    assert events()[-1] == ("auth_setting_changed", "auth.required", True, False)


def test_require_on_with_a_token_gives_no_hint_and_repeating_audits_nothing(
    runner: CliRunner,
) -> None:
    Registry().create("ci")
    result = runner.invoke(app, ["auth", "require", "on"])
    assert result.exit_code == 0
    assert "lms token create" not in result.stderr
    assert runner.invoke(app, ["auth", "require", "on"]).exit_code == 0
    changes = [e for e in events() if e[0] == "auth_setting_changed"]
    assert changes == [("auth_setting_changed", "auth.required", False, True)]


def test_require_refuses_anything_but_on_or_off(runner: CliRunner) -> None:
    result = runner.invoke(app, ["auth", "require", "maybe"])
    assert result.exit_code == 2
    assert not paths.config_file().exists()
    assert audit.read() == []


def test_require_on_a_broken_config_fails_and_leaves_it(runner: CliRunner) -> None:
    paths.ensure_dir(paths.config_file().parent)
    paths.config_file().write_text("[auth\n")
    result = runner.invoke(app, ["auth", "require", "on"])
    assert result.exit_code == 1
    assert str(paths.config_file()) in result.stderr
    assert paths.config_file().read_text() == "[auth\n"
    assert audit.read() == []


# --- config set of security settings ------------------------------------------------------------


def test_config_set_and_unset_of_security_settings_are_audited(runner: CliRunner) -> None:
    assert runner.invoke(app, ["config", "set", "mcp.allow_remote", "on"]).exit_code == 0
    assert runner.invoke(app, ["config", "set", "server.cors", "true"]).exit_code == 0
    origins = "http://localhost:3000"
    assert runner.invoke(app, ["config", "set", "server.cors_origins", origins]).exit_code == 0
    assert runner.invoke(app, ["config", "set", "server.allowed_hosts", "proxy.lan"]).exit_code == 0
    assert runner.invoke(app, ["config", "set", "server.port", "4000"]).exit_code == 0
    assert runner.invoke(app, ["config", "set", "models.ttl", "60"]).exit_code == 0
    assert runner.invoke(app, ["config", "unset", "mcp.allow_remote"]).exit_code == 0
    assert events() == [
        ("mcp_setting_changed", "mcp.allow_remote", False, True),
        ("auth_setting_changed", "server.cors", False, True),
        ("auth_setting_changed", "server.cors_origins", [], [origins]),
        ("auth_setting_changed", "server.allowed_hosts", [], ["proxy.lan"]),
        ("mcp_setting_changed", "mcp.allow_remote", True, False),
    ]


def test_config_set_of_an_unchanged_or_invalid_value_audits_nothing(runner: CliRunner) -> None:
    assert runner.invoke(app, ["config", "set", "auth.required", "off"]).exit_code == 0
    assert runner.invoke(app, ["config", "set", "auth.required", "perhaps"]).exit_code == 2
    assert audit.read() == []


# --- status -----------------------------------------------------------------------------------


def test_status_without_a_daemon_shows_the_files_and_never_starts_one(runner: CliRunner) -> None:
    Registry().create("ci")
    runner.invoke(app, ["auth", "require", "on"])
    result = runner.invoke(app, ["auth", "status"])
    assert result.exit_code == 0, result.stderr
    assert "Authentication: required (on)" in result.stdout
    assert "not running" in result.stdout
    assert "1 token " in result.stdout
    doc = json.loads(runner.invoke(app, ["auth", "status", "--json"]).stdout)
    assert doc["daemon_running"] is False
    assert doc["auth_required"] is True
    assert doc["config_healthy"] is True and doc["config_error"] is None
    assert doc["registry"]["healthy"] is True
    assert doc["registry"]["tokens"] == 1
    assert doc["registry"]["path"] == str(paths.tokens_file())
    assert doc["mcp"] == {"allow_mcp_json": False, "allow_remote": False}
    assert doc["server"] is None
    assert not paths.socket_path().exists()
    assert not control.is_pid_lock_held()


def test_status_says_when_auth_is_on_without_any_token(runner: CliRunner) -> None:
    runner.invoke(app, ["auth", "require", "on"])
    result = runner.invoke(app, ["auth", "status"])
    assert "no token exists" in result.stdout


def test_status_of_a_broken_config_is_shown_and_exits_1(runner: CliRunner) -> None:
    paths.ensure_dir(paths.config_file().parent)
    paths.config_file().write_text("[auth]\nrequired = 'yes'\n")
    result = runner.invoke(app, ["auth", "status", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["config_healthy"] is False
    assert "auth.required" in doc["config_error"]
    assert doc["auth_required"] is True  # fails closed
    text = runner.invoke(app, ["auth", "status"])
    assert text.exit_code == 1
    assert "every request refused" in text.stdout
    assert "refused (503)" in text.stderr


def test_status_of_a_broken_registry_is_shown_and_exits_1(runner: CliRunner) -> None:
    paths.ensure_dir(paths.tokens_file().parent)
    paths.tokens_file().write_text("generation = -1\n")
    result = runner.invoke(app, ["auth", "status", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["registry"]["healthy"] is False
    assert "generation" in doc["registry"]["error"]
    assert doc["registry"]["tokens"] is None
    text = runner.invoke(app, ["auth", "status"])
    assert text.exit_code == 1
    assert "BROKEN" in text.stdout


@pytest.mark.model
def test_status_asks_the_running_daemon(runner: CliRunner, running_daemon: DaemonStatus) -> None:
    result = runner.invoke(app, ["auth", "status", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["daemon_running"] is True
    assert doc["auth_required"] is False
    assert doc["registry"]["tokens"] == 0
    # The daemon re-reads both files before answering: the CLI's changes show at once.
    Registry().create("ci")
    assert runner.invoke(app, ["auth", "require", "on"]).exit_code == 0
    doc = json.loads(runner.invoke(app, ["auth", "status", "--json"]).stdout)
    assert doc["auth_required"] is True
    assert doc["registry"]["tokens"] == 1
    assert doc["server"]["running"] is False
    text = runner.invoke(app, ["auth", "status"])
    assert "Daemon:" in text.stdout and "enforces now" in text.stdout


# --- audit ------------------------------------------------------------------------------------


def test_audit_lists_entries_as_text_and_json(runner: CliRunner) -> None:
    record, _full = Registry().create("ci")
    runner.invoke(app, ["auth", "require", "on"])
    RefusalRecorder().record(RefusalKey("local", "missing_api_key", "GET", "/v1/models", "none"))
    result = runner.invoke(app, ["auth", "audit"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "EVENT", "TOKEN", "DETAILS"]
    assert lines[1].split()[1:3] == ["token_created", record.id]
    assert "name=ci" in lines[1]
    assert lines[2].split()[1] == "auth_setting_changed"
    assert "key=auth.required old=false new=true" in lines[2]
    assert lines[3].split()[1:3] == ["request_refused", "none"]
    assert "count=1" in lines[3]
    doc = json.loads(runner.invoke(app, ["auth", "audit", "--json"]).stdout)
    assert isinstance(doc, list)
    assert [e["event"] for e in doc] == ["token_created", "auth_setting_changed", "request_refused"]


def test_audit_since(runner: CliRunner) -> None:
    old = datetime.now(UTC) - timedelta(days=3)
    audit.append(audit.AuditEvent.TOKEN_REMOVED, now=old, token_id="Abcdefgh", name="x")
    Registry().create("ci")
    recent = json.loads(runner.invoke(app, ["auth", "audit", "--json", "--since", "1h"]).stdout)
    assert [e["event"] for e in recent] == ["token_created"]
    both = json.loads(runner.invoke(app, ["auth", "audit", "--json", "--since", "7d"]).stdout)
    assert len(both) == 2
    day = old.date().isoformat()
    dated = json.loads(runner.invoke(app, ["auth", "audit", "--json", "--since", day]).stdout)
    assert len(dated) == 2
    future = runner.invoke(app, ["auth", "audit", "--since", "2999-01-01"])
    assert future.exit_code == 0 and future.stdout == ""
    assert "no audit entries" in future.stderr
    bad = runner.invoke(app, ["auth", "audit", "--since", "last tuesday"])
    assert bad.exit_code == 2


def test_audit_reads_the_rotated_refusal_files(runner: CliRunner) -> None:
    Registry().create("ci")
    recorder = RefusalRecorder(RefusalLog(max_bytes=2048), max_keys=1000)
    for n in range(200):
        recorder.record(RefusalKey("local", "invalid_api_key", "GET", f"/r/{n}", "unknown"))
    kept = [path for path in refusals.rotated(refusals.log_path()) if path.exists()]
    assert len(kept) == refusals.KEEP  # the oldest were dropped, the rest rotated
    on_disk = sum(len(path.read_text().splitlines()) for path in kept)
    doc = json.loads(runner.invoke(app, ["auth", "audit", "--json"]).stdout)
    assert doc[0]["event"] == "token_created"
    routes = [e["route"] for e in doc[1:]]
    assert len(routes) == on_disk and routes[-1] == "/r/199"
    assert routes == sorted(routes, key=lambda route: int(route.rsplit("/", 1)[1]))


def test_audit_of_an_empty_log(runner: CliRunner) -> None:
    result = runner.invoke(app, ["auth", "audit"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert json.loads(runner.invoke(app, ["auth", "audit", "--json"]).stdout) == []
