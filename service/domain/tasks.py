"""Decoding one stored value into a task; the status vocabulary. Tolerant: bad data raises `MalformedValue`."""

from __future__ import annotations

import functools
from collections.abc import Container
from datetime import UTC, datetime

import msgspec

FINISHED_STATUSES = ("complete", "completed", "failed")
EMPTY_FILE_LIST = b"[]"


class MalformedValue(ValueError):
    """A stored value that is not a task status object with the expected field types."""


# gc=False: these hold only strings, numbers and bytes, never a cycle, so the cyclic collector need not track them.
# A cold refresh makes millions of file entries and a hundred thousand tasks; untracked, they cost the collector
# nothing and are made faster (a frozen dataclass took 3.5 us to construct, a frozen untracked struct 0.3 us).
class _FileEntry(msgspec.Struct, gc=False):
    path: str
    status: str
    operate: str


class _StoredValue(msgspec.Struct, gc=False):
    # the producer's field names; unknown fields are ignored so that a newer producer cannot break a scan
    process: str
    totalProgress: int = 0
    fileList: msgspec.Raw = msgspec.Raw(b"null")  # kept as raw JSON and re-emitted verbatim, never re-encoded
    clientId: str | None = None  # the last three are written only by newer producers
    startTime: str | int | None = None
    lastUpdateTime: str | int | None = None


_value_decoder = msgspec.json.Decoder(_StoredValue)
_file_list_decoder = msgspec.json.Decoder(list[_FileEntry] | None)


class StoredTask(msgspec.Struct, frozen=True, gc=False):
    """What one key holds, decoded and checked. `file_list` is the raw JSON array, ready to embed."""

    task_id: str
    process: str
    total_progress: int
    file_list: bytes
    file_count: int
    client_id: str
    start_ms: int | None  # from the producer, when it writes one
    update_ms: int | None  # idem


def decode_value(task_id: str, raw: bytes, served: Container[str] | None = None) -> StoredTask:
    """Decode one value; raise `MalformedValue` when it is not a task status object.

    With `served`, the file list of a task whose process is not in it is checked as JSON but not entry by entry:
    it is never served, and checking every entry costs five times the rest of the decode."""
    try:
        value = _value_decoder.decode(raw)
        if not 0 <= value.totalProgress <= 100:
            raise MalformedValue(f"totalProgress {value.totalProgress} is outside 0..100")
        if served is not None and value.process not in served:
            return _unserved(task_id, value)
        files = _file_list_decoder.decode(value.fileList)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise MalformedValue(str(exc)) from exc
    return StoredTask(
        task_id=task_id,
        process=value.process,
        total_progress=value.totalProgress,
        file_list=EMPTY_FILE_LIST if files is None else bytes(value.fileList),
        file_count=0 if files is None else len(files),
        client_id=value.clientId or "",
        start_ms=parse_time(value.startTime),
        update_ms=parse_time(value.lastUpdateTime),
    )


# The times this service can state: 1970-01-01 up to the last millisecond of 9999 (RFC 3339's four-digit years).
MAX_TIME_MS = 253_402_300_799_999


def _unserved(task_id: str, value: _StoredValue) -> StoredTask:
    start, update = parse_time(value.startTime), parse_time(value.lastUpdateTime)
    return StoredTask(
        task_id, value.process, value.totalProgress, EMPTY_FILE_LIST, 0, value.clientId or "", start, update
    )


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


_MILLIS = tuple(f"{millis:03d}Z" for millis in range(1000))  # formatting these per call was a third of the cost


# Rendering tens of thousands of tasks formats the same few seconds again and again; strftime dominated that.
@functools.lru_cache(maxsize=4096)
def _format_seconds(seconds: int) -> str:
    t = datetime.fromtimestamp(seconds, tz=UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}."


def task_id_prefix(key_pattern: str) -> str:
    """The literal part of a glob pattern before its first wildcard: what is stripped from a key to get the id."""
    for index, char in enumerate(key_pattern):
        if char in "*?[\\":
            return key_pattern[:index]
    return key_pattern
