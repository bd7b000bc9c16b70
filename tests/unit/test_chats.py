"""The stored-chat table: ownership, bounds, persistence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fulldisk import small_tmpfs

from lms.chats import ChatStore
from lms.errors import InvalidParameterError, PreviousResponseNotFoundError, StorageFullError


def save(store: ChatStore, owner: str | None, text: str) -> str:
    return store.save(
        owner=owner,
        model="m",
        messages=[{"role": "user", "content": text}],
        output=[{"type": "message", "content": text}],
    )


def test_round_trip_survives_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    response_id = save(ChatStore(path), "tok1", "hello")
    assert re.fullmatch(r"resp_[0-9a-f]{48}", response_id)
    stored = ChatStore(path).load(response_id, "tok1")  # as after a daemon restart
    assert stored.messages == [{"role": "user", "content": "hello"}]
    assert path.stat().st_mode & 0o777 == 0o600


def test_other_owner_sees_nothing(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / "c.db")
    response_id = save(store, "tok1", "secret plans")
    for owner in ("tok2", None):
        with pytest.raises(PreviousResponseNotFoundError) as info:
            store.load(response_id, owner)
        assert info.value.status == 404
    unknown = "resp_" + "0" * 48
    with pytest.raises(PreviousResponseNotFoundError) as missing:
        store.load(unknown, "tok1")
    assert str(missing.value).replace(unknown, "ID") == str(info.value).replace(response_id, "ID")


def test_bad_prefix(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError):
        ChatStore(tmp_path / "c.db").load("chat_123", None)


def test_bounded_oldest_pruned(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / "c.db", limit=3)
    ids = [save(store, None, str(i)) for i in range(5)]
    assert store.count() == 3
    with pytest.raises(PreviousResponseNotFoundError):
        store.load(ids[0], None)
    assert store.load(ids[4], None).messages[0]["content"] == "4"


def test_a_full_disk_refuses_the_save_and_keeps_every_stored_response() -> None:
    with small_tmpfs() as disk:
        store = ChatStore(disk.root / "chats.sqlite3")
        kept = [save(store, "tok1", f"answer {n}") for n in range(3)]
        disk.fill()
        with pytest.raises(StorageFullError) as info:
            save(store, "tok1", "x" * 20_000)
        err = info.value
        assert (err.code, err.status) == ("storage_full", 507)
        assert str(disk.root) not in err.message  # the HTTP body shows only the message
        assert err.data == {"path": str(disk.root / "chats.sqlite3")}
        assert err.hint is not None and str(disk.root / "chats.sqlite3") in err.hint
        assert store.count() == 3
        for n, response_id in enumerate(kept):
            assert store.load(response_id, "tok1").messages[0]["content"] == f"answer {n}"
        disk.free()
        again = save(store, "tok1", "x" * 20_000)
        assert store.load(again, "tok1").messages[0]["content"] == "x" * 20_000
        assert store.count() == 4
