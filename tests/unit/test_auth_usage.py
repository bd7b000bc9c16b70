"""usage.sqlite3 and the daemon's in-memory batch."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lms import paths
from lms.auth.usage import UsageBuffer, UsageStore


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    return tmp_path


T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_buffer_accumulates_and_flushes_in_one_batch(home: Path) -> None:
    store = UsageStore()
    buffer = UsageBuffer(store)
    for i in range(100):
        buffer.record_request("aaaaaaaa", T0 + timedelta(seconds=i))
    buffer.record_request("bbbbbbbb", T0)
    buffer.record_tokens("aaaaaaaa", 10, 5)
    buffer.record_tokens("aaaaaaaa", 1, 2)
    assert not paths.usage_db().exists()  # nothing written before a flush
    assert buffer.pending == 2
    assert buffer.flush() == 2
    assert buffer.pending == 0
    assert buffer.flush() == 0
    usage = store.read()
    a = usage["aaaaaaaa"]
    assert (a.request_count, a.prompt_tokens, a.completion_tokens) == (100, 11, 7)
    assert a.last_used_at == T0 + timedelta(seconds=99)
    assert usage["bbbbbbbb"].request_count == 1
    assert stat.S_IMODE(paths.usage_db().stat().st_mode) == 0o600


def test_flushes_add_up_and_last_use_never_goes_back(home: Path) -> None:
    store = UsageStore()
    buffer = UsageBuffer(store)
    buffer.record_request("aaaaaaaa", T0 + timedelta(hours=1))
    buffer.flush()
    buffer.record_request("aaaaaaaa", T0)
    buffer.record_request("aaaaaaaa", T0)
    buffer.flush()
    a = store.read(["aaaaaaaa"])["aaaaaaaa"]
    assert a.request_count == 3
    assert a.last_used_at == T0 + timedelta(hours=1)
    assert store.read(["zzzzzzzz"]) == {}
    assert a.public_dict()["last_used_at"] == "2026-06-01T13:00:00Z"


def test_batch_is_one_transaction(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = UsageStore()
    buffer = UsageBuffer(store)
    buffer.record_request("aaaaaaaa", T0)
    buffer.flush()
    statements: list[str] = []
    real_connect = sqlite3.connect

    def tracing_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        db = real_connect(*args, **kwargs)  # type: ignore[call-overload]
        db.set_trace_callback(statements.append)
        return db  # type: ignore[no-any-return]

    monkeypatch.setattr(sqlite3, "connect", tracing_connect)
    for i in range(50):
        buffer.record_request(f"tok{i:05d}", T0)
    buffer.flush()
    assert sum(s.startswith("BEGIN") for s in statements) == 1
    assert sum(s.startswith("COMMIT") for s in statements) == 1
    assert len(store.read()) == 51


def test_failed_flush_keeps_counts(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = UsageStore()
    buffer = UsageBuffer(store)
    buffer.record_request("aaaaaaaa", T0)

    def broken(deltas: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "apply", broken)
    with pytest.raises(sqlite3.OperationalError):
        buffer.flush()
    buffer.record_request("aaaaaaaa", T0 + timedelta(minutes=1))
    monkeypatch.undo()
    monkeypatch.setenv("LMS_HOME", str(home))
    buffer.flush()
    a = store.read()["aaaaaaaa"]
    assert a.request_count == 2
    assert a.last_used_at == T0 + timedelta(minutes=1)


def test_forget(home: Path) -> None:
    store = UsageStore()
    buffer = UsageBuffer(store)
    buffer.record_request("aaaaaaaa", T0)
    buffer.record_request("bbbbbbbb", T0)
    buffer.flush()
    store.forget(["aaaaaaaa"])
    assert set(store.read()) == {"bbbbbbbb"}


def test_read_without_database(home: Path) -> None:
    assert UsageStore().read() == {}
    assert not paths.usage_db().exists()
