"""Decoding one stored value into a task, and the task as a scan observed it. Tolerant: bad data raises
`MalformedValue`."""

from __future__ import annotations

import sys
from collections.abc import Container
from typing import NamedTuple

import msgspec

from service.domain.times import parse_time

EMPTY_FILE_LIST = b"[]"


class MalformedValue(ValueError):
    """A stored value that is not a task status object with the expected field types."""


# gc=False: these hold only strings, numbers and bytes, never a cycle, so the cyclic collector need not track them.
# A cold refresh makes millions of file entries and a hundred thousand tasks; untracked, they cost the collector
# nothing, and a struct is made several times faster than a frozen dataclass (docs/performance.md).
class FileEntry(msgspec.Struct, gc=False):
    """One file of an upload, as the producer stores it (and the API serves it, verbatim)."""

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
# A status and a client id repeat across thousands of tasks, and the scanner's memory and the tracker keep every
# task's: one string each, shared, rather than one per task (a million running tasks held a million "processing").
# CPython frees an interned string no longer used elsewhere, so client ids that come and go do not accumulate.
_intern = sys.intern
_file_list_decoder = msgspec.json.Decoder(list[FileEntry] | None)


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
    it is never served, and checking every entry costs more than the rest of the decode."""
    try:
        value = _value_decoder.decode(raw)
        if not 0 <= value.totalProgress <= 100:
            raise MalformedValue(f"totalProgress {value.totalProgress} is outside 0..100")
        if served is not None and value.process not in served:
            return _unserved(task_id, value)
        files = _file_list_decoder.decode(value.fileList)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise MalformedValue(str(exc)) from exc
    except RecursionError as exc:
        # JSON nested deeper than the interpreter's recursion limit (a field the service does not even read can
        # hold it): bad data like any other, never an error that escapes the decode of one value
        raise MalformedValue(f"nested too deep to decode: {exc}") from exc
    return StoredTask(
        task_id=task_id,
        process=_intern(value.process),
        total_progress=value.totalProgress,
        file_list=EMPTY_FILE_LIST if files is None else bytes(value.fileList),
        file_count=0 if files is None else len(files),
        client_id=_intern(value.clientId or ""),
        start_ms=parse_time(value.startTime),
        update_ms=parse_time(value.lastUpdateTime),
    )


def _unserved(task_id: str, value: _StoredValue) -> StoredTask:
    start, update = parse_time(value.startTime), parse_time(value.lastUpdateTime)
    process, client_id = _intern(value.process), _intern(value.clientId or "")
    return StoredTask(task_id, process, value.totalProgress, EMPTY_FILE_LIST, 0, client_id, start, update)


def task_id_prefix(key_pattern: str) -> str:
    """The literal part of a glob pattern before its first wildcard: what is stripped from a key to get the id."""
    for index, char in enumerate(key_pattern):
        if char in "*?[\\":
            return key_pattern[:index]
    return key_pattern


class Observation(NamedTuple):
    """A task as one scan saw it. (A named tuple: one is made per running task per scan, and a tuple is
    made faster than a frozen dataclass.)"""

    task: StoredTask
    fingerprint: int  # hash of the raw value: unchanged value, unchanged task
    pttl: int  # ms left on the key when it was scanned; -1 without expiry
    seen_ms: int  # wall-clock time the key was scanned
