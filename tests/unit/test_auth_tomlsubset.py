"""The fast reader of tokens.toml: tomllib's answer on the registry's own layout, None elsewhere."""

from __future__ import annotations

import random
import string
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from lms.auth import registry, tokens, tomlsubset
from lms.auth.permissions import Permission
from lms.auth.record import TokenRecord


def random_record(rng: random.Random, index: int) -> TokenRecord:
    now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**8))
    token_id = "".join(rng.choice(tokens.ALPHABET) for _ in range(8))
    perms = [p for p in Permission if rng.random() < 0.5]
    globs = rng.choice(
        [(), ("google/*",), ("a/b", "c-d/e.f*", "ü/模型"), ("[abc]?/x!",), ('q"uote/*',)]
    )
    grace = rng.random() < 0.3
    return TokenRecord(
        id=token_id,
        name=f"n{index}-" + "".join(rng.choice(string.ascii_letters + "._-") for _ in range(5)),
        hash=tokens.hash_token(token_id),
        permissions=frozenset(perms),
        models=globs,
        created_at=now,
        expires_at=now + timedelta(days=rng.randrange(1, 400)) if rng.random() < 0.5 else None,
        rpm=rng.randrange(1, 100_000) if rng.random() < 0.5 else None,
        previous_hash=tokens.hash_token("x" + token_id) if grace else None,
        previous_hash_expires_at=now + timedelta(hours=1) if grace else None,
    )


@pytest.mark.parametrize("seed", range(20))
def test_the_registry_layout_reads_exactly_as_tomllib_reads_it(seed: int) -> None:
    rng = random.Random(seed)
    records = tuple(random_record(rng, i) for i in range(rng.randrange(0, 30)))
    text = registry.dump(registry.RegistryState(generation=seed, records=records)).decode()
    expected = tomllib.loads(text)
    fast = tomlsubset.loads(text)
    if any('"' in glob for r in records for glob in r.models):
        assert fast is None  # an escaped quote: left to tomllib
    else:
        assert fast == expected


def test_parse_gives_the_same_state_through_either_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    records = tuple(random_record(rng, i) for i in range(40) if i % 7)
    records = tuple(r for r in records if not any('"' in g for g in r.models))
    data = registry.dump(registry.RegistryState(generation=3, records=records))
    assert tomlsubset.loads(data.decode()) is not None
    fast = registry.parse(data, Path("t"))
    monkeypatch.setattr(tomlsubset, "loads", lambda _text: None)
    assert registry.parse(data, Path("t")) == fast
    assert fast.records == records


@pytest.mark.parametrize(
    "text",
    [
        'a = "x\\ty"',  # an escape
        "a = 'literal'",
        'a = ["x", "y"]',  # an inline array
        "a = 1\r\n",
        "a = 1\na = 2\n",  # a duplicate key: tomllib's error
        "a = 007",
        "a = +1",
        "a = 1_000",
        "a = 2026-02-30 00:00:00+00:00",  # no such day
        "a = 2026-01-01 00:00:00",  # local date-time
        "a = 2026-01-01t00:00:00z",
        "a = true",
        "a = 1 # comment",
        "a = 1 ",
        "[tokens]\na = 1",
        "tokens = []\n[[tokens]]\nid = 'x'",
        'a = [\n    "x"\n]',  # no trailing comma
        'a = [\n    "x",\n',  # unterminated
        'a.b = "x"',
        '"a" = "x"',
        "# comment with a \x01 control",
        "a = 1\n [[tokens]]",
    ],
)
def test_anything_else_is_left_to_tomllib(text: str) -> None:
    assert tomlsubset.loads(text) is None


def test_accepted_forms() -> None:
    text = (
        '# header\n\ngeneration = 0\n\n[[tokens]]\nid = ""\nn = 12\nt = 2026-01-01T00:00:00Z\n'
        'u = 2026-01-01 02:00:00.123456+02:00\nl = []\nm = [\n    "ü",\n    "*",\n]\n'
        "\n[[tokens]]\n"
    )
    doc = tomlsubset.loads(text)
    assert doc == tomllib.loads(text)
    assert doc is not None
    table = doc["tokens"][0]
    assert table["t"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert table["u"] == datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert table["u"].utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)
    assert doc["tokens"][1] == {}
    assert tomlsubset.loads("") == {} == tomllib.loads("")
