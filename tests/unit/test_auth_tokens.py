"""Token format, hashing, constant-time verification and redaction."""

from __future__ import annotations

import hashlib
import re

import pytest

from lms.auth import tokens
from lms.errors import InvalidApiKeyError

FORMAT = re.compile(r"sk-lm-([A-Za-z0-9]{8}):([A-Za-z0-9]{20})")


def test_generate_has_lm_studio_shape_and_is_random() -> None:
    seen = set()
    for _ in range(200):
        token_id, full = tokens.generate()
        match = FORMAT.fullmatch(full)
        assert match is not None
        assert match.group(1) == token_id
        seen.add(full)
    assert len(seen) == 200


def test_parse_round_trip_and_whitespace() -> None:
    token_id, full = tokens.generate()
    assert tokens.parse(full) == (token_id, full.split(":")[1])
    assert tokens.parse(f"  {full}\n") == (token_id, full.split(":")[1])


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sk-lm-abcdefgh",
        "sk-lm-abcdefg:abcdefghij0123456789",  # id too short
        "sk-lm-abcdefgh:abcdefghij012345678",  # secret too short
        "sk-lm-abcdefgh:abcdefghij0123456789X",  # secret too long
        "sk-lm-abcdefgh:abcdefghij012345678!",
        "sk-xx-abcdefgh:abcdefghij0123456789",
        "Bearer sk-lm-abcdefgh:abcdefghij0123456789",
    ],
)
def test_parse_rejects_malformed_without_echoing(value: str) -> None:
    with pytest.raises(InvalidApiKeyError) as info:
        tokens.parse(value)
    assert info.value.code == "invalid_api_key"
    secretish = value.split(":")[-1]
    if secretish:
        assert secretish not in str(info.value)
    assert "abcdefghij" not in str(info.value)


def test_hash_is_sha256_of_whole_token() -> None:
    _, full = tokens.generate()
    assert tokens.hash_token(full) == hashlib.sha256(full.encode()).hexdigest()
    assert len(tokens.hash_token(full)) == 64


def test_compare_hashes() -> None:
    _, full = tokens.generate()
    _, other = tokens.generate()
    digest = tokens.hash_token(full)
    assert not tokens.compare_hashes(tokens.hash_token(other), digest)
    assert tokens.compare_hashes(digest, digest)
    assert not tokens.compare_hashes(digest, None)


def test_redact_keeps_only_the_id() -> None:
    token_id, full = tokens.generate()
    secret = full.split(":")[1]
    text = f"GET /v1/models?key={full}&x=1 and again '{full}'"
    redacted = tokens.redact(text)
    assert secret not in redacted
    assert f"sk-lm-{token_id}:***" in redacted
    assert tokens.redact("nothing here") == "nothing here"
    # a truncated token is scrubbed too
    assert secret[:10] not in tokens.redact(full[:-10])


def test_shown_shortens_and_redacts() -> None:
    _, full = tokens.generate()
    assert full.split(":")[1] not in tokens.shown(f"x {full}")
    assert len(tokens.shown("a" * 500)) == 64


def test_token_from_header() -> None:
    _, full = tokens.generate()
    assert tokens.token_from_header(None) is None
    assert tokens.token_from_header("  ") is None
    assert tokens.token_from_header(f"Bearer {full}") == full
    assert tokens.token_from_header(f"bearer   {full} ") == full
    with pytest.raises(InvalidApiKeyError) as info:
        tokens.token_from_header(f"Basic {full}")
    assert full not in str(info.value)
    with pytest.raises(InvalidApiKeyError):
        tokens.token_from_header("Bearer ")


def test_token_from_sdk_auth() -> None:
    token_id, full = tokens.generate()
    secret = full.split(":")[1]
    assert tokens.token_from_sdk_auth(token_id, secret) == full
    assert tokens.token_from_sdk_auth("guest:0b1c2d3e-aaaa", "x") is None
    assert tokens.token_from_sdk_auth(None, secret) is None
    assert tokens.token_from_sdk_auth(token_id, 5) is None


def test_is_token_id() -> None:
    assert tokens.is_token_id("Ab3dE5fG")
    assert not tokens.is_token_id("Ab3dE5f")
    assert not tokens.is_token_id("Ab3dE5f-")
