"""tokens.toml: round trips, names, id-vs-name resolution, edit, rotate, remove, corruption."""

from __future__ import annotations

import stat
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fulldisk import small_tmpfs

from lms import paths
from lms.auth import audit, tokens
from lms.auth.permissions import Permission
from lms.auth.registry import Registry
from lms.errors import (
    ConfigBrokenError,
    ConflictError,
    ExitCode,
    InvalidRequestError,
    NotFoundError,
    StorageFullError,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reg(home: Path, clock: FakeClock) -> Registry:
    return Registry(clock=clock)


def generation(path: Path) -> int:
    value = tomllib.loads(path.read_text())["generation"]
    assert isinstance(value, int)
    return value


def test_create_round_trip(reg: Registry, clock: FakeClock) -> None:
    expires = clock.now + timedelta(days=30)
    record, full = reg.create(
        "ci",
        [Permission.INFERENCE, Permission.MODELS],
        models=["google/*", "qwen/qwen3-4b"],
        expires_at=expires,
        rpm=60,
    )
    assert tokens.parse(full)[0] == record.id
    assert record.hash == tokens.hash_token(full)
    again = reg.find("ci")
    assert again == record
    assert again.permissions == {Permission.INFERENCE, Permission.MODELS}
    assert again.models == ("google/*", "qwen/qwen3-4b")
    assert again.expires_at == expires
    assert again.rpm == 60
    assert again.created_at == clock.now
    assert reg.list() == [record]


def test_file_is_private_and_holds_no_secret(reg: Registry) -> None:
    _, full = reg.create("a")
    record, full2 = reg.rotate("a", grace=timedelta(hours=1))
    path = paths.tokens_file()
    assert reg.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    for secret in (full.split(":")[1], full2.split(":")[1]):
        assert secret not in text
    assert record.hash in text and tokens.hash_token(full) in text


def test_default_permission_is_inference(reg: Registry) -> None:
    assert reg.create("a")[0].permissions == {Permission.INFERENCE}
    assert reg.create("b", [])[0].permissions == {Permission.INFERENCE}
    assert reg.create("c", set(Permission))[0].permissions == set(Permission)


def test_every_write_bumps_generation(reg: Registry) -> None:
    path = paths.tokens_file()
    reg.create("a")
    assert generation(path) == 1
    reg.create("b")
    reg.edit("a", rpm=5)
    reg.rotate("b")
    reg.remove("a")
    assert generation(path) == 5


def test_missing_file_is_empty(reg: Registry) -> None:
    assert reg.list() == []
    assert reg.state().generation == 0
    with pytest.raises(NotFoundError):
        reg.find("nope")


def test_duplicate_name_conflicts(reg: Registry) -> None:
    reg.create("ci")
    with pytest.raises(ConflictError) as info:
        reg.create("ci")
    assert info.value.exit_code == ExitCode.CONFLICT
    reg.create("other")
    with pytest.raises(ConflictError):
        reg.edit("other", name="ci")
    assert [r.name for r in reg.list()] == ["ci", "other"]


@pytest.mark.parametrize("name", ["", " ci", "a b", "-x", "x" * 65, "ci;rm", "sk-lm-abcdefgh:x"])
def test_bad_names(reg: Registry, name: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        reg.create(name)
    assert info.value.exit_code == ExitCode.USAGE
    assert reg.list() == []


def test_exact_id_wins_over_name(reg: Registry) -> None:
    first, _ = reg.create("first")
    # A name shaped like an id is fine ("frontend" is 8 letters)...
    second, _ = reg.create("frontend")
    assert reg.find("frontend") == second
    assert reg.find(first.id) == first
    # ...but a name equal to another token's id would make that token unreachable by name.
    with pytest.raises(ConflictError):
        reg.create(first.id)
    with pytest.raises(ConflictError):
        reg.edit("frontend", name=first.id)
    # Renaming a token to its own id is harmless.
    assert reg.edit(first.id, name=first.id).name == first.id


def test_id_beats_name_when_both_match(reg: Registry) -> None:
    # Hand-made registry where token B is named like token A's id: the id must win.
    path = paths.tokens_file()
    a, _ = reg.create("a")
    b, _ = reg.create("b")
    text = path.read_text().replace('name = "b"', f'name = "{a.id}"')
    path.write_text(text)
    assert reg.find(a.id).id == a.id
    assert reg.find(b.id).name == a.id


def test_find_never_echoes_a_full_token(reg: Registry) -> None:
    _, full = reg.create("a")
    with pytest.raises(InvalidRequestError) as info:
        reg.find(full)
    assert full.split(":")[1] not in str(info.value)
    with pytest.raises(NotFoundError) as missing:
        reg.find("ghost")
    assert "ghost" in str(missing.value)
    assert missing.value.exit_code == ExitCode.NOT_FOUND


def test_edit_keeps_secret_and_applies_changes(reg: Registry, clock: FakeClock) -> None:
    record, full = reg.create("a", models=["x/*"], rpm=10, expires_at=clock.now + timedelta(1))
    edited = reg.edit(
        "a",
        name="b",
        add_permissions=[Permission.MODELS],
        all_models=True,
        no_expiry=True,
        no_rpm=True,
    )
    assert edited.id == record.id
    assert edited.hash == record.hash == tokens.hash_token(full)
    assert edited.name == "b"
    assert edited.permissions == {Permission.INFERENCE, Permission.MODELS}
    assert edited.models == ()
    assert edited.expires_at is None
    assert edited.rpm is None
    assert reg.find(record.id) == edited
    replaced = reg.edit("b", permissions=[Permission.MCP], remove_permissions=[Permission.MCP])
    assert replaced.permissions == frozenset()
    assert reg.edit("b", models=["google/*"], rpm=3).models == ("google/*",)


def test_edit_refuses_contradictions_and_empty_edits(reg: Registry, clock: FakeClock) -> None:
    reg.create("a")
    with pytest.raises(InvalidRequestError):
        reg.edit("a")
    with pytest.raises(InvalidRequestError):
        reg.edit("a", models=["x"], all_models=True)
    with pytest.raises(InvalidRequestError):
        reg.edit("a", rpm=3, no_rpm=True)
    with pytest.raises(InvalidRequestError):
        reg.edit("a", expires_at=clock.now + timedelta(1), no_expiry=True)
    with pytest.raises(InvalidRequestError):
        reg.edit("a", expires_at=clock.now - timedelta(seconds=1))
    with pytest.raises(InvalidRequestError):
        reg.edit("a", rpm=0)


def test_noop_edit_writes_nothing(reg: Registry) -> None:
    reg.create("a", rpm=5)
    before = paths.tokens_file().read_bytes()
    reg.edit("a", rpm=5)
    assert paths.tokens_file().read_bytes() == before


def test_create_validates_input(reg: Registry, clock: FakeClock) -> None:
    with pytest.raises(InvalidRequestError):
        reg.create("a", expires_at=clock.now)
    with pytest.raises(InvalidRequestError):
        reg.create("a", rpm=-1)
    with pytest.raises(InvalidRequestError):
        reg.create("a", models=["has space"])
    assert reg.list() == []


def test_rotate_without_grace(reg: Registry) -> None:
    record, old = reg.create("a", [Permission.MODELS], rpm=7)
    rotated, new = reg.rotate("a")
    assert tokens.parse(new)[0] == record.id
    assert new != old
    assert rotated.hash == tokens.hash_token(new)
    assert rotated.previous_hash is None
    assert (rotated.name, rotated.permissions, rotated.rpm) == (
        "a",
        frozenset({Permission.MODELS}),
        7,
    )


def test_rotate_with_grace_then_pruned(reg: Registry, clock: FakeClock) -> None:
    _, old = reg.create("a")
    rotated, _ = reg.rotate("a", grace=timedelta(minutes=10))
    assert rotated.previous_hash == tokens.hash_token(old)
    assert rotated.previous_hash_expires_at == clock.now + timedelta(minutes=10)
    assert rotated.previous_hash_active(clock.now + timedelta(minutes=9)) is not None
    assert rotated.previous_hash_active(clock.now + timedelta(minutes=10)) is None
    clock.now += timedelta(minutes=11)
    reg.create("b")  # any write drops dead grace hashes
    assert reg.find("a").previous_hash is None
    with pytest.raises(InvalidRequestError):
        reg.rotate("a", grace=timedelta(seconds=-1))


def test_remove(reg: Registry) -> None:
    a, _ = reg.create("a")
    reg.create("b")
    assert reg.remove(a.id) == a
    assert [r.name for r in reg.list()] == ["b"]
    with pytest.raises(NotFoundError):
        reg.remove("a")


def test_operations_are_audited(reg: Registry) -> None:
    record, _ = reg.create("a")
    reg.edit("a", rpm=3)
    reg.rotate("a")
    reg.remove("a")
    events = [(e["event"], e["token_id"]) for e in audit.read()]
    assert events == [
        ("token_created", record.id),
        ("token_edited", record.id),
        ("token_rotated", record.id),
        ("token_removed", record.id),
    ]
    assert audit.read()[1]["changes"] == {"rpm": [None, 3]}


@pytest.mark.parametrize(
    "content",
    [
        b"this is not toml [[[",
        b"\xff\xfe",
        b"generation = -1\n",
        b"generation = 1\nsurprise = true\n",
        b'generation = 1\n[[tokens]]\nid = "short"\n',
        b'generation = 1\n[[tokens]]\nid = "Ab3dE5fG"\nname = "a"\nhash = "00"\n'
        b"permissions = []\nmodels = []\ncreated_at = 2026-01-01T00:00:00Z\n",
        b'generation = 1\n[[tokens]]\nid = "Ab3dE5fG"\nname = "a"\nhash = "' + b"0" * 64 + b'"\n'
        b'permissions = ["root"]\nmodels = []\ncreated_at = 2026-01-01T00:00:00Z\n',
        b'generation = 1\n[[tokens]]\nid = "Ab3dE5fG"\nname = "a"\nhash = "' + b"0" * 64 + b'"\n'
        b"permissions = []\nmodels = []\ncreated_at = 2026-01-01T00:00:00Z\nexpire_at = 1\n",
    ],
)
def test_corrupt_registry_refuses_reads_and_writes(reg: Registry, content: bytes) -> None:
    path = paths.tokens_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    for operation in (
        reg.list,
        lambda: reg.find("a"),
        lambda: reg.create("new"),
        lambda: reg.edit("a", rpm=1),
        lambda: reg.rotate("a"),
        lambda: reg.remove("a"),
    ):
        with pytest.raises(ConfigBrokenError) as info:
            operation()
        assert str(path) in str(info.value)
    assert path.read_bytes() == content  # never silently overwritten


def test_duplicate_ids_in_file_are_broken(reg: Registry) -> None:
    reg.create("a")
    path = paths.tokens_file()
    text = path.read_text()
    body = text[text.index("[[tokens]]") :]
    path.write_text(text + "\n" + body.replace('name = "a"', 'name = "b"'))
    with pytest.raises(ConfigBrokenError, match="id used twice"):
        reg.list()


def test_a_full_disk_refuses_a_write_and_leaves_tokens_toml_whole(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    with small_tmpfs() as disk:
        monkeypatch.setenv("LMS_HOME", str(disk.root))
        reg = Registry(clock=clock)
        kept = [reg.create(name)[0] for name in ("ci", "laptop")]
        before = reg.path.read_bytes()
        disk.fill()
        for change in (
            lambda: reg.create("phone"),
            lambda: reg.rotate("ci"),
            lambda: reg.remove("laptop"),
        ):
            with pytest.raises(StorageFullError) as info:
                change()
            assert info.value.exit_code == ExitCode.FAILED
            assert info.value.hint is not None and str(reg.path) in info.value.hint
            assert reg.path.read_bytes() == before
            assert not list(reg.path.parent.glob(".tokens.toml.*.tmp"))
        assert [record.id for record in reg.list()] == [record.id for record in kept]
        disk.free()
        record, _ = reg.create("phone")
        assert [r.name for r in reg.list()] == ["ci", "laptop", "phone"]
        assert record.name == "phone"


def test_a_change_whose_audit_entry_cannot_be_written_is_not_made(
    home: Path, reg: Registry
) -> None:
    # The audit log's disk is full while tokens.toml's is not: the entry is written first, so
    # no token is stored whose secret was never shown, a rotation keeps the old secret, and a
    # removal leaves the token (and the command says so).
    _, ci_secret = reg.create("ci")
    reg.create("laptop")
    before = reg.path.read_bytes()
    with small_tmpfs("1m") as disk:
        (home / "data").rename(home / "data.old")
        (home / "data").symlink_to(disk.root)
        disk.fill()
        for change in (
            lambda: reg.create("phone"),
            lambda: reg.rotate("ci"),
            lambda: reg.edit("ci", rpm=5),
            lambda: reg.remove("laptop"),
        ):
            with pytest.raises(StorageFullError):
                change()
            assert reg.path.read_bytes() == before
        (home / "data").unlink()
        (home / "data.old").rename(home / "data")
    assert reg.find("ci").hash == tokens.hash_token(ci_secret)  # the secret shown still works
    assert [r.name for r in reg.list()] == ["ci", "laptop"]


def test_the_key_rule_of_an_allowlist_is_stored(reg: Registry) -> None:
    # Tokens made now are written under LM Studio's keys (key_rule 2); a stored token without
    # the field keeps the rule it was written under (1); editing its allowlist moves it to 2.
    made, _ = reg.create("new", models=["google/*"])
    assert made.key_rule == 2 and reg.find("new").key_rule == 2
    text = reg.path.read_text()
    assert "key_rule = 2" in text
    reg.path.write_text(text.replace("key_rule = 2\n", ""))
    assert reg.find("new").key_rule == 1
    assert reg.edit("new", rpm=5).key_rule == 1  # not an allowlist edit
    assert reg.edit("new", models=["google/*"]).key_rule == 2
    reg.path.write_text(reg.path.read_text().replace("key_rule = 2", "key_rule = 3"))
    with pytest.raises(ConfigBrokenError, match="key_rule"):
        reg.list()
