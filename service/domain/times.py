"""Instants: epoch milliseconds in, RFC 3339 UTC with milliseconds out; the one time formatter."""

from __future__ import annotations

import functools
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
    seconds, millis = divmod(min(max(ms, 0), MAX_TIME_MS), 1000)
    return _format_seconds(seconds) + _MILLIS[millis]


def format_timestamp(seconds: float) -> str:
    """`format_time` of a `time.time()` value, truncated to the microsecond first as datetime does (a float's
    .123 may be .12299999), then rounded to the millisecond."""
    whole = int(seconds)
    return format_time(whole * 1000 + int((seconds - whole) * 1000 + 0.0005))


_MILLIS = tuple(f"{millis:03d}Z" for millis in range(1000))  # formatting these per call was a third of the cost


# Rendering tens of thousands of tasks (or a burst of log lines) formats the same few seconds again and again.
@functools.lru_cache(maxsize=4096)
def _format_seconds(seconds: int) -> str:
    t = datetime.fromtimestamp(seconds, tz=UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}."
