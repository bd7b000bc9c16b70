"""The daemon's per-request check: authenticate, authorize, change detection, fail closed."""

from __future__ import annotations

import os
import timeit
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lms import paths, storage
from lms.auth.permissions import ANY_TOKEN, PUBLIC, Permission, access_for
from lms.auth.registry import Registry
from lms.auth.verifier import RACY_WINDOW_NS, TokenVerifier
from lms.errors import (
    ConfigBrokenError,
    ExpiredApiKeyError,
    InvalidApiKeyError,
    MissingApiKeyError,
    ModelNotAllowedError,
    PermissionDeniedError,
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


@pytest.fixture
def verifier(home: Path, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(clock=clock)


def test_valid_token(reg: Registry, verifier: TokenVerifier) -> None:
    record, full = reg.create("a")
    assert verifier.authenticate(full) == record
    assert verifier.authenticate(f" {full}\n") == record
    assert verifier.generation == 1


def test_missing_token(reg: Registry, verifier: TokenVerifier) -> None:
    reg.create("a")
    for value in (None, "", "   "):
        with pytest.raises(MissingApiKeyError) as info:
            verifier.authenticate(value)
        assert info.value.status == 401
        assert info.value.headers["WWW-Authenticate"] == "Bearer"
        assert "Authorization: Bearer" in info.value.message


def test_invalid_tokens_never_echoed(reg: Registry, verifier: TokenVerifier) -> None:
    _, full = reg.create("a")
    secret = full.split(":")[1]
    wrong = full[:-1] + ("A" if full[-1] != "A" else "B")
    unknown = "sk-lm-ZZZZZZZZ:" + secret
    cases = {"malformed": full + "x", "wrong_secret": wrong, "unknown_token": unknown}
    for reason, value in cases.items():
        with pytest.raises(InvalidApiKeyError) as info:
            verifier.authenticate(value)
        err = info.value
        assert err.data["reason"] == reason
        assert err.status == 401
        for shown in (err.message, err.hint or "", str(err.data)):
            assert secret not in shown
            assert value not in shown
    assert info.value.data["token_id"] == "ZZZZZZZZ"


def test_knows_registered_ids_only(reg: Registry, verifier: TokenVerifier) -> None:
    record, full = reg.create("ci")
    verifier.authenticate(full)
    assert verifier.knows(record.id)
    assert not verifier.knows("Zz9Zz9Zz")
    reg.remove("ci")
    verifier.refresh()
    assert not verifier.knows(record.id)


def test_revocation_on_next_request(reg: Registry, verifier: TokenVerifier) -> None:
    _, full = reg.create("a")
    verifier.authenticate(full)
    reg.remove("a")
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(full)


def test_expiry(reg: Registry, verifier: TokenVerifier, clock: FakeClock) -> None:
    _, full = reg.create("a", expires_at=clock.now + timedelta(hours=1))
    verifier.authenticate(full)
    clock.now += timedelta(hours=1)
    with pytest.raises(ExpiredApiKeyError) as info:
        verifier.authenticate(full)
    assert info.value.status == 401
    assert "expired" in info.value.message
    # A wrong secret for an expired token learns nothing about the expiry.
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(full[:-1] + ("A" if full[-1] != "A" else "B"))
    reg.edit("a", no_expiry=True)
    verifier.authenticate(full)


def test_rotation_without_grace(reg: Registry, verifier: TokenVerifier) -> None:
    _, old = reg.create("a")
    verifier.authenticate(old)
    _, new = reg.rotate("a")
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(old)
    assert verifier.authenticate(new).name == "a"


def test_rotation_with_grace(reg: Registry, verifier: TokenVerifier, clock: FakeClock) -> None:
    _, old = reg.create("a")
    _, new = reg.rotate("a", grace=timedelta(minutes=5))
    assert verifier.authenticate(old).name == "a"
    assert verifier.authenticate(new).name == "a"
    clock.now += timedelta(minutes=5)
    with pytest.raises(InvalidApiKeyError) as info:
        verifier.authenticate(old)
    assert info.value.data["reason"] == "rotated_out"
    assert verifier.authenticate(new).name == "a"
    # Never again, even if the clock were to go back after the grace hash was pruned.
    reg.create("b")
    clock.now -= timedelta(minutes=4)
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(old)


def test_authorize_permissions(reg: Registry, verifier: TokenVerifier) -> None:
    _, full = reg.create("a")
    record = verifier.authenticate(full)
    verifier.authorize(record, PUBLIC)
    verifier.authorize(record, ANY_TOKEN)
    verifier.authorize(record, access_for("POST", "/v1/chat/completions"))
    with pytest.raises(PermissionDeniedError) as info:
        verifier.authorize(record, access_for("POST", "/api/v1/models/load"))
    assert info.value.status == 403
    assert info.value.code == "insufficient_permissions"
    assert "'models'" in info.value.message
    reg.edit("a", add_permissions=[Permission.MODELS])
    record = verifier.authenticate(full)
    verifier.authorize(record, Permission.MODELS)


def test_authorize_model_allowlist(reg: Registry, verifier: TokenVerifier) -> None:
    _, full = reg.create("a", models=["google/*", "qwen/qwen3-?b"])
    record = verifier.authenticate(full)
    verifier.authorize(record, Permission.INFERENCE, "google/gemma-3-270m")
    verifier.authorize(record, ANY_TOKEN, "qwen/qwen3-4b")
    for key in ("Google/gemma-3-270m", "qwen/qwen3-14b", "meta/llama", "xgoogle/a"):
        with pytest.raises(ModelNotAllowedError) as info:
            verifier.authorize(record, Permission.INFERENCE, key)
        assert info.value.code == "model_not_allowed"
        assert info.value.status == 403
    assert record.allowed_models(["google/a", "meta/b", "qwen/qwen3-8b"]) == [
        "google/a",
        "qwen/qwen3-8b",
    ]
    _, open_full = reg.create("b")
    verifier.authorize(verifier.authenticate(open_full), Permission.INFERENCE, "any/model")


def test_two_edits_in_a_row_are_both_noticed(reg: Registry, verifier: TokenVerifier) -> None:
    _, full = reg.create("a", rpm=10)
    assert verifier.authenticate(full).rpm == 10
    reg.edit("a", rpm=20)
    reg.edit("a", rpm=30)
    assert verifier.authenticate(full).rpm == 30
    assert verifier.generation == 3


def test_change_noticed_even_when_the_signature_collides(
    reg: Registry, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worst case of inode reuse: same inode, size and times for two versions of the file."""
    _, full = reg.create("a", rpm=10)
    frozen = (1, 2, 3, os.stat(paths.tokens_file()).st_ctime_ns)
    monkeypatch.setattr(storage, "file_signature", lambda path: frozen)
    assert verifier.authenticate(full).rpm == 10
    reg.edit("a", rpm=20)
    assert verifier.authenticate(full).rpm == 20
    reg.edit("a", rpm=30)
    reg.remove("a")
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(full)


def test_settled_file_costs_only_a_stat(
    reg: Registry, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, full = reg.create("a")
    wall = [os.stat(paths.tokens_file()).st_ctime_ns]
    verifier = TokenVerifier(wall_ns=lambda: wall[0])
    verifier.authenticate(full)
    reads: list[Path] = []
    original = Path.read_bytes

    def counting(self: Path) -> bytes:
        reads.append(self)
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    verifier.authenticate(full)
    assert len(reads) == 1  # still within the racy window: content checked
    wall[0] += RACY_WINDOW_NS + 1
    verifier.authenticate(full)  # confirms once more, then trusts the signature
    reads.clear()
    for _ in range(5):
        verifier.authenticate(full)
    assert reads == []


def test_fail_closed_on_corrupt_file_then_recover(reg: Registry, verifier: TokenVerifier) -> None:
    _, full = reg.create("a")
    verifier.authenticate(full)
    path = paths.tokens_file()
    good = path.read_bytes()
    path.write_bytes(good.replace(b"generation", b"generation = = "))
    for value in (full, None, "garbage"):
        with pytest.raises(ConfigBrokenError) as info:
            verifier.authenticate(value)
        assert info.value.status == 503
        assert str(path) in info.value.message
    assert verifier.error is not None
    assert verifier.records == ()
    status = verifier.status()
    assert status["healthy"] is False and status["tokens"] == 0
    assert str(path) in str(status["error"])
    path.write_bytes(good)
    assert verifier.authenticate(full).name == "a"
    assert verifier.error is None
    assert verifier.status() == {
        "path": str(path),
        "healthy": True,
        "error": None,
        "generation": 1,
        "tokens": 1,
    }


def test_fail_closed_on_unreadable_file(reg: Registry, verifier: TokenVerifier) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    _, full = reg.create("a")
    paths.tokens_file().chmod(0)
    with pytest.raises(ConfigBrokenError):
        verifier.authenticate(full)
    paths.tokens_file().chmod(0o600)
    verifier.authenticate(full)


def test_missing_registry_means_no_valid_token(home: Path, verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate("sk-lm-abcdefgh:abcdefghij0123456789")
    assert verifier.error is None


def test_check_is_cheap(reg: Registry, home: Path) -> None:
    for i in range(100):
        reg.create(f"t{i}", models=["google/*"])
    _, full = reg.create("hot", [Permission.INFERENCE], models=["google/*"])
    verifier = TokenVerifier(wall_ns=lambda: 2**62)  # settled: no racy content checks
    access = access_for("POST", "/v1/chat/completions")

    def check() -> None:
        verifier.authorize(verifier.authenticate(full), access, "google/gemma-3-270m")

    check()
    runs = 2000
    seconds = min(timeit.repeat(check, number=runs, repeat=3)) / runs
    assert seconds < 100e-6, f"{seconds * 1e6:.1f} us per check"
