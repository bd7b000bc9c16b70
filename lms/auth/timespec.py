"""Time specifications typed on the command line (README: Command reference): durations and UTC
dates.

* durations: an integer and a unit, ``45s``, ``30m``, ``12h``, ``30d``, ``2w``, or a sum of them
  (``1h30m``); ``0`` alone is zero (for ``--grace 0``);
* dates: ``2027-01-31`` means the start of that day, 00:00 UTC;
* datetimes: ISO 8601 (``2027-01-31T12:00``, ``2027-01-31T12:00:00+02:00``, ``...Z``); one
  without an offset is UTC.

Every function returns aware UTC datetimes and raises InvalidRequestError (exit 2) with an example
of the expected form on bad input.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from lms.auth.tokens import shown
from lms.errors import InvalidRequestError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d{1,9})([smhdw])")
_DURATION = re.compile(r"(?:\d{1,9}[smhdw])+")
# Far enough for any expiry, near enough that datetime arithmetic cannot overflow.
MAX_DURATION = timedelta(days=100 * 366)

DURATION_HINT = "use a number and a unit: 45s, 30m, 12h, 30d, 2w (or a sum such as 1h30m)"
DATE_HINT = "use a duration (30m, 12h, 30d) or a UTC date such as 2027-01-31 or 2027-01-31T12:00Z"


def utc_now() -> datetime:
    """The current time, aware, in UTC (the default clock of the auth package)."""
    return datetime.now(UTC)


def parse_duration(text: str, *, param: str | None = None) -> timedelta:
    """``30m`` → ``timedelta(minutes=30)``; ``0`` → zero. Raises InvalidRequestError."""
    value = text.strip().lower()
    if value == "0":
        return timedelta(0)
    if not _DURATION.fullmatch(value):
        raise InvalidRequestError(
            f"invalid duration {shown(text)!r}: {DURATION_HINT}", param=param, hint=DURATION_HINT
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidRequestError(
            f"duration {shown(text)!r} is too long (at most 100 years)", param=param
        )
    return timedelta(seconds=seconds)


def parse_datetime(text: str, *, param: str | None = None) -> datetime:
    """An ISO date or datetime → aware UTC datetime (a bare date is its start, 00:00Z)."""
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            f"invalid date {shown(text)!r}: {DATE_HINT}", param=param, hint=DATE_HINT
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_expiry(text: str, now: datetime | None = None, *, param: str = "expires") -> datetime:
    """When a token given ``--expires TEXT`` expires: a duration from ``now``, or a date.

    Raises InvalidRequestError for bad input, a zero duration or a moment not in the future.
    """
    now = now or utc_now()
    value = text.strip()
    if value == "0" or _DURATION.fullmatch(value.lower()):
        duration = parse_duration(value, param=param)
        if not duration:
            raise InvalidRequestError(f"--{param} needs a duration above zero", param=param)
        return now + duration
    moment = parse_datetime(value, param=param)
    check_future(moment, now, param=param)
    return moment


def parse_since(text: str, now: datetime | None = None, *, param: str = "since") -> datetime:
    """The start of a ``--since TEXT`` window: a duration means that long ago, else a date."""
    now = now or utc_now()
    value = text.strip()
    if _DURATION.fullmatch(value.lower()) or value == "0":
        return now - parse_duration(value, param=param)
    return parse_datetime(value, param=param)


def check_future(moment: datetime, now: datetime | None = None, *, param: str = "expires") -> None:
    """Raise InvalidRequestError unless ``moment`` is after ``now`` (an expiry in the past)."""
    now = now or utc_now()
    if moment <= now:
        raise InvalidRequestError(
            f"--{param} {format_utc(moment)} is in the past (it is now {format_utc(now)})",
            param=param,
            hint="give a later date or a duration such as 30d",
        )


def format_utc(moment: datetime) -> str:
    """``2027-01-31T00:00:00Z``: the one way lms shows and stores a moment."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
