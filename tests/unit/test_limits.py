"""The load bounds of lms.limits (docs/LIMITS.md): TTLs, identifiers, context lengths."""

from __future__ import annotations

import pytest

from lms import limits
from lms.errors import InvalidParameterError


@pytest.mark.parametrize("value", [1, 3600, limits.MAX_TTL_SECONDS])
def test_ttls_within_bounds(value: int) -> None:
    assert limits.check_ttl(value) == value


@pytest.mark.parametrize(
    "value", [0, -1, limits.MAX_TTL_SECONDS + 1, 10**401, 1.5, True, "60", None]
)
def test_ttls_out_of_bounds_name_the_field(value: object) -> None:
    with pytest.raises(InvalidParameterError) as info:
        limits.check_ttl(value, "--ttl")
    assert info.value.param == "--ttl"
    assert "'--ttl'" in info.value.message


@pytest.mark.parametrize(
    ("milliseconds", "seconds"),
    [(1, 1), (1000, 1), (1001, 2), (2.5, 1), (limits.MAX_TTL_SECONDS * 1000, 2_592_000)],
)
def test_ttl_milliseconds_round_up_to_seconds(milliseconds: float, seconds: int) -> None:
    assert limits.ttl_from_milliseconds(milliseconds) == seconds


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), 0, -1.0, 1e300, 10**401, True, "1000"],
)
def test_ttl_milliseconds_refused(value: object) -> None:
    with pytest.raises(InvalidParameterError) as info:
        limits.ttl_from_milliseconds(value, "loadTtlMs")
    assert info.value.param == "loadTtlMs"


@pytest.mark.parametrize("value", ["g", "my model", "google/gemma-3-270m:2", "é" * 128, "模型"])
def test_printable_identifiers(value: str) -> None:
    assert limits.check_identifier(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 129,
        "\ud800",
        "a\x00b",
        "a\x1bb",
        "a\tb",
        "a\nb",
        "\u2028",
        "\u202e",
        "\u00a0x",
        " x",
        "x ",
        7,
        None,
    ],
)
def test_identifiers_refused(value: object) -> None:
    with pytest.raises(InvalidParameterError) as info:
        limits.check_identifier(value)
    assert info.value.param == "identifier"


def test_context_length_bounds() -> None:
    assert limits.check_context_length(16, 4096) == 16
    assert limits.check_context_length(4096, 4096) == 4096
    for value in (15, 4097, 10**9, 16.0, True):
        with pytest.raises(InvalidParameterError) as info:
            limits.check_context_length(value, 4096, "contextLength")
        assert info.value.param == "contextLength"
