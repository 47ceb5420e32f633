"""The one time formatter and parser: RFC 3339 UTC with milliseconds, the same text datetime gives."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from service.domain import times
from service.domain.times import MAX_TIME_MS, format_time, parse_time


def _reference(ms: int) -> str:
    clamped = min(max(ms, 0), MAX_TIME_MS)
    t = datetime.fromtimestamp(clamped // 1000, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{clamped % 1000:03d}Z"


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_time_is_datetime_text_clamped_to_1970_9999(ms: int) -> None:
    assert format_time(ms) == _reference(ms)


def test_the_edges() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(-1) == "1970-01-01T00:00:00.000Z"
    assert format_time(MAX_TIME_MS) == "9999-12-31T23:59:59.999Z"
    assert format_time(MAX_TIME_MS + 1) == "9999-12-31T23:59:59.999Z"
    assert format_time(951_782_400_000) == "2000-02-29T00:00:00.000Z"  # a leap day


def test_round_trip() -> None:
    for ms in (0, 1_764_900_000_123, MAX_TIME_MS):
        assert parse_time(format_time(ms)) == ms


def test_the_days_remembered_stay_bounded() -> None:
    """Values may name any day from 1970 to 9999; the formatter's memory of days does not grow with them."""
    for day in range(0, 3 * times._MAX_DAYS * 86_400_000, 86_400_000):
        format_time(day)
    assert len(times._DAYS) <= times._MAX_DAYS
