"""Durations and UTC dates for --expires, --grace and --since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from lms.auth import timespec
from lms.errors import ExitCode, InvalidRequestError

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(minutes=90)),
        ("30D", timedelta(days=30)),
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert timespec.parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "30", "m30", "30x", "-5m", "1.5h", "30 d", "soon", "99999999999d"]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        timespec.parse_duration(text)
    assert info.value.exit_code == ExitCode.USAGE
    assert "30m" in str(info.value) or "too long" in str(info.value)


def test_expiry_duration_is_relative_to_now() -> None:
    assert timespec.parse_expiry("30d", NOW) == NOW + timedelta(days=30)
    assert timespec.parse_expiry("12h", NOW).tzinfo is not None


def test_expiry_date_means_start_of_day_utc() -> None:
    moment = timespec.parse_expiry("2027-01-31", NOW)
    assert moment == datetime(2027, 1, 31, 0, 0, tzinfo=UTC)
    assert moment.utcoffset() == timedelta(0)


def test_expiry_iso_datetime_with_offset_converts_to_utc() -> None:
    moment = timespec.parse_expiry("2027-01-31T12:00:00+02:00", NOW)
    assert moment == datetime(2027, 1, 31, 10, 0, tzinfo=UTC)
    assert timespec.parse_expiry("2027-01-31T12:00Z", NOW) == datetime(2027, 1, 31, 12, tzinfo=UTC)
    assert timespec.parse_expiry("2027-01-31T12:00", NOW) == datetime(2027, 1, 31, 12, tzinfo=UTC)


def test_expiry_in_the_past_is_refused_clearly() -> None:
    with pytest.raises(InvalidRequestError) as info:
        timespec.parse_expiry("2020-01-01", NOW)
    assert "in the past" in str(info.value)
    assert "2020-01-01T00:00:00Z" in str(info.value)
    with pytest.raises(InvalidRequestError):
        timespec.parse_expiry("0", NOW)
    with pytest.raises(InvalidRequestError):
        timespec.parse_expiry("2026-06-01T12:00:00Z", NOW)  # exactly now


def test_bad_date() -> None:
    with pytest.raises(InvalidRequestError) as info:
        timespec.parse_expiry("2027-13-45", NOW)
    assert "2027-01-31" in str(info.value)  # the message shows the expected form


def test_since() -> None:
    assert timespec.parse_since("1h", NOW) == NOW - timedelta(hours=1)
    assert timespec.parse_since("2026-05-01", NOW) == datetime(2026, 5, 1, tzinfo=UTC)


def test_format_utc() -> None:
    local = datetime(2027, 1, 31, 2, 0, 0, 123, tzinfo=timezone(timedelta(hours=2)))
    assert timespec.format_utc(local) == "2027-01-31T00:00:00Z"
