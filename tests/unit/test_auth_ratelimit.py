"""Per-token requests-per-minute limiter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lms.auth.permissions import DEFAULT_PERMISSIONS
from lms.auth.ratelimit import RateLimiter
from lms.auth.record import TokenRecord
from lms.errors import RateLimitedError


def record(token_id: str = "Ab3dE5fG", rpm: int | None = 3) -> TokenRecord:
    return TokenRecord(
        id=token_id,
        name="t",
        hash="0" * 64,
        permissions=DEFAULT_PERMISSIONS,
        models=(),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        rpm=rpm,
    )


def test_limit_and_retry_after() -> None:
    limiter = RateLimiter(clock=lambda: 0.0)
    token = record(rpm=3)
    for t in (0.0, 10.0, 20.0):
        limiter.hit(token, now=t)
    with pytest.raises(RateLimitedError) as info:
        limiter.hit(token, now=30.0)
    assert info.value.status == 429
    assert info.value.headers == {"Retry-After": "30"}  # the request at 0 leaves at 60
    assert info.value.data["token_id"] == token.id
    # Refused requests do not count: at 60 exactly one slot is free again.
    limiter.hit(token, now=60.0)
    with pytest.raises(RateLimitedError) as again:
        limiter.hit(token, now=60.5)
    assert again.value.headers["Retry-After"] == "10"


def test_sliding_window_never_exceeds_rpm_in_any_minute() -> None:
    limiter = RateLimiter()
    token = record(rpm=5)
    accepted: list[float] = []
    for step in range(600):
        now = step * 0.37
        try:
            limiter.hit(token, now=now)
        except RateLimitedError:
            continue
        accepted.append(now)
    assert len(accepted) > 5 * 3
    for i, start in enumerate(accepted):
        in_window = [t for t in accepted[i:] if t < start + 60.0]
        assert len(in_window) <= 5


def test_tokens_are_independent_and_unlimited_tokens_cost_nothing() -> None:
    limiter = RateLimiter()
    a, b = record("aaaaaaaa", 1), record("bbbbbbbb", 1)
    limiter.hit(a, now=0)
    limiter.hit(b, now=0)
    with pytest.raises(RateLimitedError):
        limiter.hit(a, now=1)
    free = record("cccccccc", None)
    for _ in range(1000):
        limiter.hit(free, now=1)
    assert len(limiter) == 2


def test_lowering_rpm_applies_at_once() -> None:
    limiter = RateLimiter()
    for t in range(10):
        limiter.hit(record(rpm=10), now=float(t))
    with pytest.raises(RateLimitedError) as info:
        limiter.hit(record(rpm=2), now=10.0)
    # 8 of the 10 requests (t=0..7) must leave the window: the one at t=8 leaves at 68.
    assert info.value.headers["Retry-After"] == "58"


def test_prune_forgets_idle_tokens() -> None:
    limiter = RateLimiter()
    limiter.hit(record("aaaaaaaa"), now=0)
    limiter.hit(record("bbbbbbbb"), now=50)
    assert limiter.prune(now=100) == 1
    assert len(limiter) == 1
