"""audit.jsonl: events, privacy (never a token), permissions, torn lines."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lms import paths
from lms.auth import audit
from lms.auth.registry import Registry


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    return tmp_path


def test_token_lifecycle_never_writes_a_secret(home: Path) -> None:
    registry = Registry()
    secrets: list[str] = []
    record, full = registry.create("ci", models=["google/*"])
    secrets.append(full)
    registry.edit("ci", name="ci2", rpm=10)
    secrets.append(registry.rotate("ci2", grace=timedelta(minutes=1))[1])
    audit.request_refused(record.id, "POST", f"/v1/chat/completions?api_key={full}", "x")
    audit.append(audit.AuditEvent.REQUEST_REFUSED, note={"header": f"Bearer {secrets[-1]}"})
    registry.remove("ci2")
    text = paths.audit_log().read_text()
    assert text.count("\n") == 6
    for token in secrets:
        assert token.split(":")[1] not in text
        assert token not in text
    assert record.id in text
    assert record.hash not in text


def test_file_mode_and_shape(home: Path) -> None:
    entry = audit.request_refused(None, "GET", "/v1/models", "missing_api_key")
    assert stat.S_IMODE(paths.audit_log().stat().st_mode) == 0o600
    assert entry["token_id"] == "none"
    assert entry["event"] == "request_refused"
    assert entry["time"].endswith("Z")
    lines = paths.audit_log().read_text().splitlines()
    assert [json.loads(line) for line in lines] == [entry]


def test_setting_changes(home: Path) -> None:
    audit.setting_changed("auth.required", False, True)
    audit.setting_changed("mcp.allow_remote", False, True)
    assert [e["event"] for e in audit.read()] == ["auth_setting_changed", "mcp_setting_changed"]
    assert audit.read()[0]["new"] is True


def test_read_since(home: Path) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for day in range(5):
        audit.request_refused("aaaaaaaa", "GET", "/v1/models", str(day), now=base + timedelta(day))
    assert [e["reason"] for e in audit.read(base + timedelta(days=3))] == ["3", "4"]
    assert len(audit.read()) == 5


def test_torn_last_line_is_skipped_and_repaired(home: Path) -> None:
    audit.request_refused("aaaaaaaa", "GET", "/v1/models", "first")
    with paths.audit_log().open("ab") as out:
        out.write(b'{"time":"2026-01-01T00:00:00Z","event":"requ')  # a writer killed mid-line
    assert [e["reason"] for e in audit.read()] == ["first"]
    audit.request_refused("aaaaaaaa", "GET", "/v1/models", "after")
    assert [e["reason"] for e in audit.read()] == ["first", "after"]


def test_missing_log_reads_empty(home: Path) -> None:
    assert audit.read() == []


def test_long_fields_are_capped(home: Path) -> None:
    entry = audit.request_refused("aaaaaaaa", "GET", "/" + "x" * 10_000, "r")
    assert len(entry["route"]) <= audit.MAX_FIELD_LENGTH + 1


def test_refusal_flood_is_coalesced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    recorder = audit.RefusalRecorder(interval=60.0)
    written = [
        recorder.record("abcd1234", "GET", "/v1/models", "invalid_api_key") for _ in range(50)
    ]
    assert written[0] and not any(written[1:])
    assert recorder.record(None, "GET", "/v1/models", "missing_api_key")  # another key
    entries = audit.read()
    assert len(entries) == 2
    recorder.interval = 0.0
    recorder.record("abcd1234", "GET", "/v1/models", "invalid_api_key")
    assert audit.read()[-1]["repeated"] == 49
