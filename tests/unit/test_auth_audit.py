"""The audit log: audit.jsonl (changes) and refusals.jsonl (counted refusals, rotated): events,
privacy (never a token), permissions, torn lines, coalescing a client cannot defeat, rotation."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fulldisk import small_tmpfs

from lms import config, paths
from lms.auth import audit, refusals
from lms.auth.gate import TokenGate, Where
from lms.auth.permissions import Permission
from lms.auth.refusals import OTHER, RefusalKey, RefusalLog, RefusalRecorder, peer_class
from lms.auth.registry import Registry
from lms.auth.tokens import compose, random_id, random_secret
from lms.errors import AuthError, StorageFullError


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    return tmp_path


def key(
    reason: str = "invalid_api_key", route: str = "/v1/models", token: str = "none"
) -> RefusalKey:
    return RefusalKey(peer="local", reason=reason, method="GET", route=route, token_id=token)


def refused() -> list[dict[str, object]]:
    return [e for e in audit.read() if e["event"] == "request_refused"]


def total(entries: list[dict[str, object]]) -> int:
    return sum(int(str(e["count"])) for e in entries)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_lifecycle_never_writes_a_secret(home: Path) -> None:
    registry = Registry()
    secrets: list[str] = []
    record, full = registry.create("ci", models=["google/*"])
    secrets.append(full)
    registry.edit("ci", name="ci2", rpm=10)
    secrets.append(registry.rotate("ci2", grace=timedelta(minutes=1))[1])
    recorder = RefusalRecorder()
    recorder.record(key(route=f"/v1/chat/completions?api_key={full}", token=record.id))
    audit.append(audit.AuditEvent.TOKEN_EDITED, note={"header": f"Bearer {secrets[-1]}"})
    registry.remove("ci2")
    text = paths.audit_log().read_text() + refusals.log_path().read_text()
    assert text.count("\n") == 6
    for token in secrets:
        assert token.split(":")[1] not in text
        assert token not in text
    assert record.id in text
    assert record.hash not in text


def test_files_mode_and_shape(home: Path) -> None:
    RefusalRecorder().record(key("missing_api_key"))
    audit.setting_changed("auth.required", False, True)
    for path in (paths.audit_log(), refusals.log_path()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (entry,) = [json.loads(line) for line in refusals.log_path().read_text().splitlines()]
    assert entry["event"] == "request_refused"
    assert entry["time"].endswith("Z")
    assert {k: entry[k] for k in ("token_id", "reason", "route", "peer", "count")} == {
        "token_id": "none",
        "reason": "missing_api_key",
        "route": "/v1/models",
        "peer": "local",
        "count": 1,
    }
    assert "request_refused" not in paths.audit_log().read_text()  # changes stay apart


def test_setting_changes(home: Path) -> None:
    audit.setting_changed("auth.required", False, True)
    audit.setting_changed("mcp.allow_remote", False, True)
    assert [e["event"] for e in audit.read()] == ["auth_setting_changed", "mcp_setting_changed"]
    assert audit.read()[0]["new"] is True


def test_read_since_and_merge_by_time(home: Path) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for day in range(5):
        audit.append(audit.AuditEvent.TOKEN_REMOVED, now=base + timedelta(day), name=str(day))
    RefusalRecorder().record(key())  # now: after every change above
    assert [e.get("name") for e in audit.read(base + timedelta(days=3))] == ["3", "4", None]
    assert len(audit.read()) == 6
    assert audit.read()[-1]["event"] == "request_refused"


def test_torn_last_line_is_skipped_and_repaired(home: Path) -> None:
    audit.append(audit.AuditEvent.TOKEN_REMOVED, name="first")
    RefusalRecorder().record(key("first"))
    for path in (paths.audit_log(), refusals.log_path()):
        with path.open("ab") as out:
            out.write(b'{"time":"2026-01-01T00:00:00Z","event":"requ')  # a writer killed mid-line
    assert len(audit.read()) == 2
    audit.append(audit.AuditEvent.TOKEN_REMOVED, name="after")
    RefusalRecorder().record(key("after"))
    assert [e.get("name") or e.get("reason") for e in audit.read()] == [
        "first",
        "first",
        "after",
        "after",
    ]


def test_missing_log_reads_empty(home: Path) -> None:
    assert audit.read() == []


def test_long_fields_are_capped(home: Path) -> None:
    RefusalRecorder().record(key(route="/" + "x" * 10_000))
    assert len(str(refused()[0]["route"])) <= refusals.MAX_FIELD_LENGTH + 1


def test_repeats_are_one_line_with_their_count_and_none_is_lost(home: Path) -> None:
    clock = Clock()
    recorder = RefusalRecorder(window=5.0, clock=clock)
    for _ in range(50):
        recorder.record(key())
    recorder.record(key("missing_api_key"))
    assert [e["count"] for e in refused()] == [1, 1]  # the first of each key, at once
    assert recorder.pending == 49
    clock.now += 5.0  # the window has passed: the next refusal writes the repeats first
    recorder.record(key())  # seen in the last window: a flood, counted for the next line
    assert [e["count"] for e in refused()] == [1, 1, 49]
    assert "since" in refused()[2]
    recorder.flush()  # shutdown
    assert [e["count"] for e in refused()] == [1, 1, 49, 1]
    assert total(refused()) == 52
    clock.now += 100.0
    recorder.flush()  # a window without it: the key is new again, written at once
    recorder.record(key())
    assert total(refused()) == 53 and recorder.pending == 0


def test_the_last_window_is_written_by_a_timer(home: Path) -> None:
    async def scenario() -> None:
        recorder = RefusalRecorder(window=0.05)
        for _ in range(10):
            recorder.record(key())
        deadline = time.monotonic() + 30
        while recorder.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert [e["count"] for e in refused()] == [1, 9]


def test_keys_past_the_bound_share_one_other_line(home: Path) -> None:
    recorder = RefusalRecorder(max_keys=3)
    for n in range(100):
        recorder.record(key(route=f"/r{n}"))
    recorder.flush()
    entries = refused()
    assert len(entries) == 4
    assert entries[-1]["route"] == OTHER.route and entries[-1]["count"] == 97
    assert total(entries) == 100


def test_a_failed_write_keeps_its_counts(home: Path) -> None:
    blocker = home / "blocked"
    blocker.write_text("a file where a directory should be")
    recorder = RefusalRecorder(RefusalLog(blocker / "refusals.jsonl"))
    for _ in range(3):
        recorder.record(key())
    recorder.flush()
    assert recorder.pending == 3
    blocker.unlink()
    blocker.mkdir()
    recorder.flush()
    lines = (blocker / "refusals.jsonl").read_text().splitlines()
    assert [json.loads(line)["count"] for line in lines] == [3]


def test_rotation_bounds_the_files_and_keeps_changes(home: Path) -> None:
    registry = Registry()
    registry.create("ci")
    log = RefusalLog(max_bytes=4096)
    recorder = RefusalRecorder(log, max_keys=10_000)
    for n in range(2000):
        recorder.record(key(route=f"/v1/route/{n}"))
    kept = [p for p in refusals.rotated(log.path) if p.exists()]
    assert len(kept) == refusals.KEEP
    assert all(p.stat().st_size <= 4096 for p in kept)
    entries = audit.read()
    assert entries[0]["event"] == "token_created"  # a flood never rotates a change away
    routes = [e["route"] for e in entries[1:]]
    assert routes[-1] == "/v1/route/1999"  # the newest refusals are kept, in order
    assert routes == sorted(routes, key=lambda r: int(str(r).rsplit("/", 1)[1]))


def test_writers_sharing_the_file_never_tear_or_lose_a_line(home: Path) -> None:
    log = RefusalLog(max_bytes=64 * 1024)  # room for every line in the kept files

    def write(name: str) -> None:
        for n in range(150):
            log.write([{"time": "2026-01-01T00:00:00Z", "event": "x", "who": name, "n": n}])

    writers = [threading.Thread(target=write, args=(name,)) for name in ("cli", "daemon")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    lines = [json.loads(line) for line in log.read_lines()]
    assert sorted((e["who"], e["n"]) for e in lines) == sorted(
        (who, n) for who in ("cli", "daemon") for n in range(150)
    )


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        (None, "local"),
        ("127.0.0.1", "local"),
        ("::1", "local"),
        ("192.168.1.77", "192.168.1.0/24"),
        ("::ffff:10.0.0.9", "10.0.0.0/24"),
        ("2001:db8:1:2:3::4", "2001:db8:1::/48"),
        ("not an address", "local"),
    ],
)
def test_peer_class(address: str | None, shown: str) -> None:
    assert peer_class(address) == shown


def test_the_gate_counts_random_tokens_as_one_key(home: Path) -> None:
    registry = Registry()
    record, full = registry.create("ci", permissions={Permission.INFERENCE})
    gate = TokenGate()
    where = Where("GET", "/v1/models", "203.0.113.9")
    presented = [compose(random_id(), random_secret()) for _ in range(200)]
    presented += ["sk-lm-garbage", "", None, compose(record.id, random_secret())]
    for raw in presented:
        with pytest.raises(AuthError):
            gate.admit(raw, Permission.INFERENCE, where)
    gate.refusals.flush()
    entries = refused()
    assert total(entries) == len(presented)
    keys = {(e["token_id"], e["reason"], e["peer"]) for e in entries}
    assert keys == {
        ("unknown", "invalid_api_key", "203.0.113.0/24"),
        ("none", "missing_api_key", "203.0.113.0/24"),
        (record.id, "invalid_api_key", "203.0.113.0/24"),  # a registered id, wrong secret
    }
    assert gate.admit(full, Permission.INFERENCE, where).id == record.id


def test_a_flooding_network_is_answered_late_and_no_one_else(home: Path) -> None:
    gate = TokenGate(tarpit_after=5)
    flooder, other = Where("GET", "/v1/models", "203.0.113.9"), Where("GET", "/v1/models", "::1")
    delays = []
    for _ in range(7):
        with pytest.raises(AuthError):
            gate.admit(None, Permission.INFERENCE, flooder)
        delays.append(gate.refusal_delay(flooder))
    assert delays == [0.0] * 5 + [gate.tarpit_seconds] * 2
    assert gate.refusal_delay(Where("GET", "/v1/models", "203.0.113.200")) > 0  # same /24
    with pytest.raises(AuthError):
        gate.admit(None, Permission.INFERENCE, other)
    assert gate.refusal_delay(other) == 0.0
    gate.refusals.flush()  # a new window
    assert gate.refusal_delay(flooder) == 0.0


def test_a_security_setting_is_not_changed_when_its_audit_entry_cannot_be_written(
    home: Path,
) -> None:
    config.set_value("auth.required", "on", before_write=audit.security_setting)
    config.set_value("server.port", "1300", before_write=audit.security_setting)
    before = paths.config_file().read_bytes()
    with small_tmpfs("1m") as disk:
        (home / "data").rename(home / "data.old")
        (home / "data").symlink_to(disk.root)
        disk.fill()
        for change in (
            lambda: config.set_value("auth.required", "off", before_write=audit.security_setting),
            lambda: config.unset_value("auth.required", before_write=audit.security_setting),
        ):
            with pytest.raises(StorageFullError):
                change()
            assert paths.config_file().read_bytes() == before
        # A setting that is not a security one has no entry to write: it changes.
        config.set_value("server.port", "1301", before_write=audit.security_setting)
        (home / "data").unlink()
        (home / "data.old").rename(home / "data")
    assert config.read_file()["server.port"] == 1301
    changes = [(e["key"], e["new"]) for e in audit.read() if e["event"] == "auth_setting_changed"]
    assert changes == [("auth.required", True)]
