from __future__ import annotations

import pytest

from service.domain.tasks import MalformedValue, decode_value, task_id_prefix
from service.domain.times import MAX_TIME_MS, format_time, parse_time

PRODUCER_VALUE = (
    b'{"process":"processing","totalProgress":40,"fileList":['
    b'{"path":"src/main.go","status":"completed","operate":"add"},'
    b'{"path":"old.go","status":"processing","operate":"delete"}]}'
)


def test_decodes_what_the_producer_writes() -> None:
    task = decode_value("t1", PRODUCER_VALUE)
    assert (task.task_id, task.process, task.total_progress, task.file_count) == ("t1", "processing", 40, 2)
    assert task.file_list.startswith(b'[{"path":"src/main.go"')
    assert (task.client_id, task.start_ms, task.update_ms) == ("", None, None)


def test_null_or_missing_file_list_becomes_empty() -> None:
    for raw in (b'{"process":"pending","totalProgress":0,"fileList":null}', b'{"process":"pending"}'):
        task = decode_value("t", raw)
        assert (task.file_list, task.file_count, task.total_progress) == (b"[]", 0, 0)


def test_newer_producer_fields_are_taken() -> None:
    raw = (
        b'{"process":"processing","totalProgress":1,"fileList":null,"clientId":"c-9",'
        b'"startTime":"2026-11-28T01:02:03.456Z","lastUpdateTime":1795827723000}'
    )
    task = decode_value("t", raw)
    assert task.client_id == "c-9"
    assert task.start_ms == parse_time("2026-11-28T01:02:03.456Z")
    assert task.update_ms == 1795827723000


def test_unknown_fields_are_ignored() -> None:
    assert decode_value("t", b'{"process":"pending","extra":{"a":[1]}}').process == "pending"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[1,2]",
        b'"processing"',
        b"{}",
        b'{"process":3}',
        b'{"process":"processing","totalProgress":"40"}',
        b'{"process":"processing","totalProgress":true}',
        b'{"process":"processing","totalProgress":101}',
        b'{"process":"processing","totalProgress":-1}',
        b'{"process":"processing","totalProgress":4.5}',
        b'{"process":"processing","fileList":{"path":"a"}}',
        b'{"process":"processing","fileList":["a.go"]}',
        b'{"process":"processing","fileList":[{"path":"a","status":"completed"}]}',
        b'{"process":"processing","fileList":[{"path":1,"status":"completed","operate":"add"}]}',
        b'{"process":"processing","clientId":7}',
    ],
)
def test_malformed_values_are_rejected(raw: bytes) -> None:
    with pytest.raises(MalformedValue):
        decode_value("t", raw)


def test_times() -> None:
    ms = 1795827723456
    assert format_time(ms) == "2026-11-28T01:02:03.456Z"
    assert format_time(ms - 456) == "2026-11-28T01:02:03.000Z"
    assert parse_time(format_time(ms)) == ms
    assert parse_time("2026-11-28T02:02:03.456+01:00") == ms
    assert parse_time("2026-11-28T01:02:03.456") == ms  # no offset: read as UTC
    assert parse_time(ms) == ms
    assert parse_time("yesterday") is None
    assert parse_time(100_000_000_000_000_000) is None  # year 3170843: no task has that time
    assert parse_time("0999-01-01T00:00:00Z") is None  # before 1970
    assert parse_time(MAX_TIME_MS) == MAX_TIME_MS
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(MAX_TIME_MS) == "9999-12-31T23:59:59.999Z"
    assert format_time(MAX_TIME_MS + 10**12) == "9999-12-31T23:59:59.999Z"  # an extrapolation past 9999
    assert format_time(-5) == "1970-01-01T00:00:00.000Z"
    assert parse_time(-5) is None
    assert parse_time(None) is None


def test_task_id_prefix() -> None:
    assert task_id_prefix("request:id:*") == "request:id:"
    assert task_id_prefix("job:?x*") == "job:"
    assert task_id_prefix("exact") == "exact"


def test_file_lists_are_checked_entry_by_entry_only_for_served_statuses() -> None:
    raw = b'{"process":"completed","totalProgress":100,"fileList":["src/main.go"],"startTime":1795000000000}'
    with pytest.raises(MalformedValue):
        decode_value("t", raw)
    finished = decode_value("t", raw, served={"processing"})
    assert (finished.process, finished.total_progress, finished.start_ms) == ("completed", 100, 1795000000000)
    with pytest.raises(MalformedValue):  # a served status still gets every check
        decode_value("t", raw.replace(b"completed", b"processing"), served={"processing"})
    with pytest.raises(MalformedValue):  # and the top level is always checked
        decode_value("t", b'{"process":"completed","totalProgress":"100"}', served={"processing"})
    with pytest.raises(MalformedValue):  # as is the JSON syntax of the file list
        decode_value("t", b'{"process":"completed","totalProgress":100,"fileList":[}', served={"processing"})


def test_format_time_is_the_same_for_every_millisecond_of_a_second() -> None:
    base = 1_795_000_000_000
    assert [format_time(base + ms) for ms in (0, 1, 999)] == [
        "2026-11-18T11:06:40.000Z",
        "2026-11-18T11:06:40.001Z",
        "2026-11-18T11:06:40.999Z",
    ]
