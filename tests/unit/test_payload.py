"""The bounded JSON decoder every request body and SDK frame goes through."""

from __future__ import annotations

import json

import pytest

from lms import payload
from lms.errors import InvalidJsonError, InvalidParameterError


def test_ordinary_bodies_decode_unchanged() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "héllo \u2603"}], "seed": 2**63}
    assert payload.loads(json.dumps(body)) == body


@pytest.mark.parametrize("depth", [payload.MAX_DEPTH + 1, 990, 5_000, 100_000])
def test_deep_nesting_is_refused_at_any_depth(depth: int) -> None:
    with pytest.raises(InvalidJsonError, match="nested deeper than 64"):
        payload.loads("[" * depth + "]" * depth)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    depth = payload.MAX_DEPTH
    assert payload.loads("[" * depth + "]" * depth) is not None


def test_a_huge_integer_names_its_field() -> None:
    with pytest.raises(InvalidParameterError) as info:
        payload.loads('{"options": {"ttl": 1' + "0" * 400 + "}}")
    assert info.value.param == "options.ttl"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused(literal: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        payload.loads('{"temperature": ' + literal + "}")
    assert info.value.param == "temperature"


def test_a_lone_surrogate_names_its_field() -> None:
    with pytest.raises(InvalidParameterError) as info:
        payload.loads('{"messages": [{"content": "a\\ud800b"}]}')
    assert info.value.param == "messages[0].content"


def test_a_lone_surrogate_in_a_key_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="not valid Unicode"):
        payload.loads('{"tools": {"\\udc00": 1}}')


def test_a_surrogate_pair_is_ordinary_text() -> None:
    assert payload.loads('"\\ud83d\\ude00"') == "\U0001f600"


def test_invalid_utf8_and_syntax_are_invalid_json() -> None:
    with pytest.raises(InvalidJsonError):
        payload.loads(b'{"a": "\xff"}')
    with pytest.raises(InvalidJsonError):
        payload.loads(b'{"a": ')


def test_an_integer_past_the_conversion_limit_is_invalid_json() -> None:
    # Python refuses to convert more than 4,300 digits (a ValueError, not a JSONDecodeError).
    with pytest.raises(InvalidJsonError, match="64 bits"):
        payload.loads('{"instance_id": 1' + "0" * 4400 + "}")
