"""Instants: epoch milliseconds in, RFC 3339 UTC with milliseconds out; the one time formatter."""

from __future__ import annotations

from datetime import UTC, datetime

# The times this service can state: 1970-01-01 up to the last millisecond of 9999 (RFC 3339's four-digit years).
MAX_TIME_MS = 253_402_300_799_999


def parse_time(value: str | int | None) -> int | None:
    """Epoch milliseconds from RFC 3339 text or epoch milliseconds; None when absent, unreadable or outside
    1970-9999 (a time no task can have, which must not break the rendering of the whole list)."""
    if value is None:
        return None
    if isinstance(value, int):
        ms = value
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:  # RFC 3339 requires an offset; read a bare time as UTC rather than drop it
            parsed = parsed.replace(tzinfo=UTC)
        ms = round(parsed.timestamp() * 1000)
    return ms if 0 <= ms <= MAX_TIME_MS else None


def format_time(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. `2026-11-28T01:02:03.456Z`; clamped to 1970-9999."""
    if not 0 <= ms <= MAX_TIME_MS:
        ms = 0 if ms < 0 else MAX_TIME_MS
    seconds, millis = divmod(ms, 1000)
    day, second = divmod(seconds, 86_400)
    hour, rest = divmod(second, 3600)
    return (_DAYS.get(day) or _day(day)) + _HOURS[hour] + _MINUTES_SECONDS[rest] + _MILLIS[millis]


def format_timestamp(seconds: float) -> str:
    """`format_time` of a `time.time()` value, truncated to the microsecond first as datetime does (a float's
    .123 may be .12299999), then rounded to the millisecond."""
    whole = int(seconds)
    return format_time(whole * 1000 + int((seconds - whole) * 1000 + 0.0005))


# A snapshot formats two or three times for each of hundreds of thousands of tasks, whose seconds are nearly all
# distinct (a cache of formatted seconds misses): the parts are looked up instead, and only days formatted.
_MILLIS = tuple(f"{millis:03d}Z" for millis in range(1000))
_MINUTES_SECONDS = tuple(f"{minute:02d}:{second:02d}." for minute in range(60) for second in range(60))
_HOURS = tuple(f"{hour:02d}:" for hour in range(24))
_DAYS: dict[int, str] = {}  # days since 1970 -> "YYYY-MM-DDT", the days formatted so far (a few per run)
_MAX_DAYS = 4096  # strange values may name any day from 1970 to 9999: the memory stays bounded


def _day(day: int) -> str:
    if len(_DAYS) >= _MAX_DAYS:
        _DAYS.clear()
    t = datetime.fromtimestamp(day * 86_400, tz=UTC)
    text = _DAYS[day] = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T"
    return text
