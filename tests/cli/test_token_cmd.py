"""``lms token``: create, list, edit, rotate, rm — files only, no daemon."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lms import paths, storage
from lms.auth import audit, registry, tokens
from lms.auth.record import TokenRecord
from lms.auth.registry import Registry
from lms.auth.usage import UsageDelta, UsageStore
from lms.auth.verifier import TokenVerifier
from lms.cli import app
from lms.cli import render as render_module
from lms.errors import ExpiredApiKeyError, InvalidApiKeyError

pytestmark = pytest.mark.usefixtures("lms_home")

TOKEN_LINE = re.compile(r"sk-lm-[A-Za-z0-9]{8}:[A-Za-z0-9]{20}\n")


def create(runner: CliRunner, name: str, *args: str) -> str:
    result = runner.invoke(app, ["token", "create", name, "--quiet", *args])
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def secret_of(token: str) -> str:
    return token.split(":", 1)[1]


# --- create -----------------------------------------------------------------------------------


def test_create_prints_the_token_alone_on_stdout_and_the_note_on_stderr(
    runner: CliRunner,
) -> None:
    result = runner.invoke(app, ["token", "create", "ci"])
    assert result.exit_code == 0, result.stderr
    assert TOKEN_LINE.fullmatch(result.stdout)
    token = result.stdout.strip()
    record = Registry().find("ci")
    assert token.startswith(f"sk-lm-{record.id}:")
    assert tokens.hash_token(token) == record.hash
    assert record.id in result.stderr
    assert "permissions: inference" in result.stderr
    assert "shown only once" in result.stderr
    assert "export LM_API_TOKEN=" in result.stderr
    assert secret_of(token) not in result.stderr
    # Authentication is off by default: the note says how to turn it on.
    assert "lms auth require on" in result.stderr


def test_create_quiet_prints_exactly_the_token_and_nothing_on_stderr(runner: CliRunner) -> None:
    result = runner.invoke(app, ["token", "create", "ci", "--quiet"])
    assert result.exit_code == 0
    assert TOKEN_LINE.fullmatch(result.stdout)
    assert result.stderr == ""
    assert tokens.hash_token(result.stdout.strip()) == Registry().find("ci").hash


def test_create_json_is_one_document_with_the_token_and_no_hash(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        ["token", "create", "ci", "--perm", "all", "--model", "google/*", "--rpm", "30", "--json"],
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    record = Registry().find("ci")
    assert doc == {**record.public_dict(), "token": doc["token"]}
    assert doc["permissions"] == ["inference", "models", "mcp", "remote-mcp"]
    assert doc["models"] == ["google/*"] and doc["rpm"] == 30
    assert tokens.hash_token(doc["token"]) == record.hash
    assert record.hash not in result.stdout
    assert "hash" not in doc


def test_create_takes_repeated_and_comma_separated_permissions(runner: CliRunner) -> None:
    create(runner, "a", "--perm", "models,mcp", "-p", "inference")
    assert Registry().find("a").public_dict()["permissions"] == ["inference", "models", "mcp"]
    create(runner, "b")
    assert Registry().find("b").public_dict()["permissions"] == ["inference"]


def test_create_refuses_an_unknown_permission_listing_the_valid_ones(runner: CliRunner) -> None:
    result = runner.invoke(app, ["token", "create", "ci", "--perm", "inference,admin"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "unknown permission 'admin'" in result.stderr
    assert "inference, models, mcp, remote-mcp, all" in result.stderr
    assert Registry().list() == []


def test_create_refuses_a_taken_name_with_exit_6(runner: CliRunner) -> None:
    create(runner, "ci")
    result = runner.invoke(app, ["token", "create", "ci"])
    assert result.exit_code == 6
    assert result.stdout == ""
    assert "already exists" in result.stderr
    assert len(Registry().list()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad name"], "invalid token name"),
        (["ci", "--expires", "yesterday"], "invalid date"),
        (["ci", "--expires", "2020-01-01"], "in the past"),
        (["ci", "--rpm", "0"], "--rpm"),
        (["ci", "--model", "a b"], "invalid model pattern"),
    ],
)
def test_create_refuses_bad_input_with_exit_2(
    runner: CliRunner, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["token", "create", *args])
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert Registry().list() == []


def test_create_expiry_as_a_duration_or_a_date(runner: CliRunner) -> None:
    before = datetime.now(UTC)
    create(runner, "month", "--expires", "30d")
    create(runner, "dated", "--expires", "2099-01-31")
    month = Registry().find("month").expires_at
    assert month is not None
    assert before + timedelta(days=30) <= month <= datetime.now(UTC) + timedelta(days=30)
    assert Registry().find("dated").expires_at == datetime(2099, 1, 31, tzinfo=UTC)


def test_create_never_writes_the_token_to_the_registry_or_the_audit_log(
    runner: CliRunner,
) -> None:
    token = create(runner, "ci")
    for path in (paths.tokens_file(), paths.audit_log()):
        text = path.read_text()
        assert secret_of(token) not in text
    entries = audit.read()
    assert [e["event"] for e in entries] == ["token_created"]
    assert entries[0]["token_id"] == Registry().find("ci").id


# --- list -------------------------------------------------------------------------------------


def test_list_of_an_empty_registry_says_so_on_stderr(runner: CliRunner) -> None:
    result = runner.invoke(app, ["token", "list"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no tokens yet" in result.stderr
    as_json = runner.invoke(app, ["token", "list", "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == []


def test_list_shows_plain_columns_when_piped_and_never_a_secret(runner: CliRunner) -> None:
    first = create(runner, "ci", "--perm", "inference,models", "--model", "google/*")
    second = create(runner, "web", "--expires", "2099-01-31", "--rpm", "5")
    result = runner.invoke(app, ["token", "list"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "NAME", "PERMISSIONS", "MODELS", "CREATED", "EXPIRES", "LAST", "USED", "REQUESTS"
    ]  # fmt: skip
    ci, web = Registry().find("ci"), Registry().find("web")
    assert lines[1].split()[:4] == [ci.id, "ci", "inference,models", "google/*"]
    assert lines[1].split()[5:] == ["never", "never", "0"]
    assert lines[2].split()[:4] == [web.id, "web", "inference", "all"]
    assert lines[2].split()[5] == "2099-01-31T00:00:00Z"
    # Columns are aligned: every row starts its NAME at the same offset.
    assert lines[1].index("ci") == lines[2].index("web") == lines[0].index("NAME")
    for token in (first, second):
        assert secret_of(token) not in result.stdout
    assert ci.hash not in result.stdout and web.hash not in result.stdout
    assert "\x1b[" not in result.stdout  # no rich table, no colour on a pipe


def test_list_json_has_usage_and_never_a_secret_or_a_hash(runner: CliRunner) -> None:
    made = [create(runner, name) for name in ("a", "b", "c")]
    a = Registry().find("a")
    used_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    UsageStore().apply({a.id: UsageDelta(used_at.timestamp(), request_count=7, prompt_tokens=3)})
    result = runner.invoke(app, ["token", "list", "--json"])
    assert result.exit_code == 0
    docs = json.loads(result.stdout)
    assert [d["name"] for d in docs] == ["a", "b", "c"]
    assert set(docs[0]) == {
        "id", "name", "permissions", "models", "rpm", "created_at", "expires_at",
        "rotation_grace_until", "expired", "last_used_at", "request_count", "prompt_tokens",
        "completion_tokens", "unknown_usage_count",
    }  # fmt: skip
    assert docs[0]["request_count"] == 7
    assert docs[0]["last_used_at"] == "2026-01-02T03:04:05Z"
    assert docs[1]["request_count"] == 0 and docs[1]["last_used_at"] is None
    for token, record in zip(made, Registry().list(), strict=True):
        assert secret_of(token) not in result.stdout
        assert record.hash not in result.stdout
    row = runner.invoke(app, ["token", "list"]).stdout.splitlines()[1].split()
    assert row[-2:] == ["2026-01-02T03:04:05Z", "7"]


def test_list_survives_a_damaged_usage_database(runner: CliRunner) -> None:
    create(runner, "ci")
    paths.ensure_dir(paths.usage_db().parent)
    paths.usage_db().write_bytes(b"this is not a database" * 100)
    result = runner.invoke(app, ["token", "list", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["request_count"] == 0
    assert "cannot read token usage" in result.stderr


def test_list_marks_expired_tokens(runner: CliRunner) -> None:
    now = datetime.now(UTC)
    write_records(
        record("OldTok01", "old", now - timedelta(days=2), expires_at=now - timedelta(days=1)),
    )
    docs = json.loads(runner.invoke(app, ["token", "list", "--json"]).stdout)
    assert docs[0]["expired"] is True
    assert "(expired)" in runner.invoke(app, ["token", "list"]).stdout


def test_list_on_a_terminal_draws_a_rich_table(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(runner, "ci")
    from lms.cli import token as token_cmd

    monkeypatch.setattr(token_cmd, "_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["token", "list"])
    assert result.exit_code == 0, result.stderr
    assert "LAST USED" in result.stdout and "ci" in result.stdout


def test_list_of_many_tokens_on_a_terminal_skips_rich(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lms.cli import token as token_cmd

    now = datetime.now(UTC)
    write_records(
        *(record(f"Tok{i:05d}", f"t{i}", now) for i in range(3)),
        record("OldTok01", "old", now - timedelta(days=2), expires_at=now - timedelta(days=1)),
    )
    monkeypatch.setattr(token_cmd, "_is_terminal", lambda: True)
    monkeypatch.setattr(token_cmd, "_RICH_ROWS_MAX", 2)
    monkeypatch.setattr(render_module, "use_colour", lambda _stream: True)
    result = runner.invoke(app, ["token", "list"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("\x1b[1mID ")  # bold header
    assert lines[1].startswith("Tok00000    t0 ")  # plain rows, aligned as on a pipe
    assert lines[4].startswith("\x1b[2mOldTok01")  # expired: dim
    assert len(lines) == 5


def test_list_of_a_broken_registry_fails_naming_the_file(runner: CliRunner) -> None:
    paths.ensure_dir(paths.tokens_file().parent)
    paths.tokens_file().write_text("generation = [\n")
    result = runner.invoke(app, ["token", "list"])
    assert result.exit_code == 1
    assert str(paths.tokens_file()) in result.stderr
    assert "Traceback" not in result.stderr


# --- edit -------------------------------------------------------------------------------------


def test_edit_changes_limits_and_keeps_the_secret(runner: CliRunner) -> None:
    token = create(runner, "ci", "--rpm", "10", "--expires", "30d")
    before = Registry().find("ci")
    result = runner.invoke(
        app,
        [
            "token", "edit", "ci", "--name", "ci2", "--add-perm", "models",
            "--model", "google/*", "--model", "qwen/*", "--no-rpm", "--no-expiry",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    after = Registry().find("ci2")
    assert after.id == before.id and after.hash == before.hash
    assert tokens.hash_token(token) == after.hash
    assert after.public_dict()["permissions"] == ["inference", "models"]
    assert after.models == ("google/*", "qwen/*")
    assert after.rpm is None and after.expires_at is None
    assert "secret is unchanged" in result.stderr
    assert result.stdout == ""


def test_edit_replaces_removes_permissions_and_clears_models(runner: CliRunner) -> None:
    create(runner, "ci", "--model", "google/*")
    assert runner.invoke(app, ["token", "edit", "ci", "--perm", "mcp,remote-mcp"]).exit_code == 0
    assert Registry().find("ci").public_dict()["permissions"] == ["mcp", "remote-mcp"]
    result = runner.invoke(
        app, ["token", "edit", "ci", "--remove-perm", "mcp", "--all-models", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["permissions"] == ["remote-mcp"] and doc["models"] == []
    assert doc == Registry().find("ci").public_dict()
    again = runner.invoke(app, ["token", "edit", "ci", "--all-models"])
    assert again.exit_code == 0
    assert "already had these settings" in again.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nobody", "--rpm", "5"], 5, "no token with id or name 'nobody'"),
        (["ci"], 2, "nothing to change"),
        (["ci", "--rpm", "5", "--no-rpm"], 2, "cannot be used together"),
        (["ci", "--model", "x/*", "--all-models"], 2, "cannot be used together"),
        (["ci", "--add-perm", "root"], 2, "unknown permission"),
        (["ci", "--expires", "2001-01-01"], 2, "in the past"),
    ],
)
def test_edit_errors(runner: CliRunner, args: list[str], code: int, message: str) -> None:
    create(runner, "ci")
    before = paths.tokens_file().read_bytes()
    result = runner.invoke(app, ["token", "edit", *args])
    assert result.exit_code == code, result.stderr
    assert message in result.stderr
    assert paths.tokens_file().read_bytes() == before


def test_edit_renaming_onto_a_taken_name_is_a_conflict(runner: CliRunner) -> None:
    create(runner, "a")
    create(runner, "b")
    result = runner.invoke(app, ["token", "edit", "b", "--name", "a"])
    assert result.exit_code == 6
    assert "already exists" in result.stderr


# --- rotate -----------------------------------------------------------------------------------


def test_rotate_prints_a_new_token_for_the_same_id(runner: CliRunner) -> None:
    old = create(runner, "ci", "--perm", "models")
    result = runner.invoke(app, ["token", "rotate", "ci"])
    assert result.exit_code == 0, result.stderr
    assert TOKEN_LINE.fullmatch(result.stdout)
    new = result.stdout.strip()
    assert new != old and new.split(":")[0] == old.split(":")[0]
    assert "no longer works" in result.stderr
    assert secret_of(new) not in result.stderr
    verifier = TokenVerifier()
    assert verifier.authenticate(new).name == "ci"
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(old)
    assert Registry().find("ci").public_dict()["permissions"] == ["models"]


def test_rotate_with_grace_keeps_the_old_secret_for_a_while(runner: CliRunner) -> None:
    old = create(runner, "ci")
    result = runner.invoke(app, ["token", "rotate", "ci", "--grace", "1h", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["rotation_grace_until"] is not None
    verifier = TokenVerifier()
    assert verifier.authenticate(old).name == "ci"
    assert verifier.authenticate(doc["token"]).name == "ci"
    later = datetime.now(UTC) + timedelta(hours=2)
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(old, now=later)


def test_rotate_quiet_and_errors(runner: CliRunner) -> None:
    create(runner, "ci")
    quiet = runner.invoke(app, ["token", "rotate", "ci", "-q"])
    assert quiet.exit_code == 0
    assert TOKEN_LINE.fullmatch(quiet.stdout) and quiet.stderr == ""
    assert runner.invoke(app, ["token", "rotate", "ci", "--grace", "soon"]).exit_code == 2
    assert runner.invoke(app, ["token", "rotate", "ghost"]).exit_code == 5


# --- rm ---------------------------------------------------------------------------------------


def test_rm_without_yes_off_a_terminal_exits_2_and_keeps_the_token(runner: CliRunner) -> None:
    token = create(runner, "ci")
    result = runner.invoke(app, ["token", "rm", "ci"])
    assert result.exit_code == 2
    assert "--yes" in result.stderr
    assert result.stdout == ""
    assert tokens.hash_token(token) == Registry().find("ci").hash


def test_rm_yes_revokes_at_once(runner: CliRunner) -> None:
    token = create(runner, "ci")
    verifier = TokenVerifier()
    assert verifier.authenticate(token).name == "ci"
    result = runner.invoke(app, ["token", "rm", "ci", "--yes"])
    assert result.exit_code == 0, result.stderr
    assert "revoked token 'ci'" in result.stderr
    assert Registry().list() == []
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(token)
    assert [e["event"] for e in audit.read()] == ["token_created", "token_removed"]


def test_rm_asks_on_a_terminal(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    create(runner, "ci")
    monkeypatch.setattr(render_module, "is_interactive", lambda: True)
    declined = runner.invoke(app, ["token", "rm", "ci"], input="n\n")
    assert declined.exit_code == 1
    assert "Revoke token 'ci'" in declined.stderr
    assert len(Registry().list()) == 1
    accepted = runner.invoke(app, ["token", "rm", "ci"], input="y\n")
    assert accepted.exit_code == 0, accepted.stderr
    assert Registry().list() == []


def test_rm_of_an_unknown_token_exits_5(runner: CliRunner) -> None:
    result = runner.invoke(app, ["token", "rm", "ghost", "--yes"])
    assert result.exit_code == 5
    assert "no token with id or name 'ghost'" in result.stderr


def test_a_full_token_given_as_id_is_refused_and_never_echoed(runner: CliRunner) -> None:
    token = create(runner, "ci")
    result = runner.invoke(app, ["token", "rm", token, "--yes"])
    assert result.exit_code == 2
    assert secret_of(token) not in result.stderr
    assert "looks like a full token" in result.stderr
    assert len(Registry().list()) == 1


def test_an_exact_id_wins_over_a_name(runner: CliRunner) -> None:
    # The registry never makes this clash itself; a hand-edited file can.
    now = datetime.now(UTC)
    write_records(record("AAAAaaaa", "first", now), record("BBBBbbbb", "AAAAaaaa", now))
    result = runner.invoke(app, ["token", "rm", "AAAAaaaa", "--yes"])
    assert result.exit_code == 0, result.stderr
    assert [r.id for r in Registry().list()] == ["BBBBbbbb"]
    assert runner.invoke(app, ["token", "rm", "AAAAaaaa", "--yes"]).exit_code == 0
    assert Registry().list() == []


def test_expired_token_is_refused_by_the_verifier(runner: CliRunner) -> None:
    # `lms token edit --expires` takes effect on the next check.
    token = create(runner, "ci")
    later = datetime.now(UTC) + timedelta(days=3)
    assert runner.invoke(app, ["token", "edit", "ci", "--expires", "1d"]).exit_code == 0
    with pytest.raises(ExpiredApiKeyError):
        TokenVerifier().authenticate(token, now=later)


# --- helpers ----------------------------------------------------------------------------------


def record(
    token_id: str, name: str, created: datetime, expires_at: datetime | None = None
) -> TokenRecord:
    return TokenRecord(
        id=token_id,
        name=name,
        hash=tokens.hash_token(tokens.compose(token_id, tokens.random_secret())),
        permissions=frozenset(),
        models=(),
        created_at=created.replace(microsecond=0),
        expires_at=expires_at,
    )


def write_records(*records: TokenRecord) -> Path:
    path = paths.tokens_file()
    state = registry.RegistryState(generation=1, records=records)
    storage.write_atomic(path, registry.dump(state), mode=0o600)
    return path
