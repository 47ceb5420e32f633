"""Request ids, one access line per request in either format, and the process's logging setup."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import orjson
import pytest

from service.devtools.embedded import free_port
from service.domain.times import format_timestamp as format_time
from service.http.access_log import (
    LOGGED_PARAMETERS,
    JsonFormatter,
    PlainFormatter,
    accept_request_id,
    configure_logging,
    loggable_target,
    request_id_var,
    write_access_line,
)
from service.http.app import create_app
from service.settings import settings_from_mapping
from tests.conftest import first_answer, running_app

RUNNING = "/codebase-embedder/api/v1/tasks/running"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "service.access" and hasattr(r, "fields")]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b", True),
        (b"Root=1-67891233-abcdef012345678912345678", True),
        (b"trace:abc/def+ghi@jkl~m_n.o", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"two words", False),
        (b"line\nbreak", False),
        (b'quote"', False),
        (b"", False),
        (None, False),
    ],
)
def test_request_id_is_kept_only_when_it_is_a_plain_token(sent: bytes | None, kept: bool) -> None:
    chosen = accept_request_id(sent)
    if kept:
        assert sent is not None and chosen == sent.decode()
    else:
        assert UUID.fullmatch(chosen)


def test_log_target_logs_only_the_api_s_query_values_and_no_control_characters() -> None:
    query = b"pageSize=4&token=abc&Access_Token=def&auth=t1&bearer=t2&authorization=t3&key&clientId=c1&&PAGE=9"
    scope = {"path": "/x", "raw_path": b"/a%0Ab", "query_string": query}
    assert loggable_target(scope) == (
        "/a%0Ab?pageSize=4&token=***&Access_Token=***&auth=***&bearer=***&authorization=***&***&clientId=c1&&PAGE=***"
    )
    assert loggable_target({"path": "/a\nb", "query_string": b""}) == "/a\\x0ab"


def test_every_query_parameter_of_the_api_is_logged_as_sent() -> None:
    from service.http.openapi import build_document
    from service.settings import Settings

    document = build_document(Settings())
    names = {
        parameter["name"] for parameter in document["components"]["parameters"].values() if parameter["in"] == "query"
    }
    assert names == set(LOGGED_PARAMETERS)


@pytest.mark.anyio
async def test_one_line_per_request_with_its_id(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(settings_from_mapping({}), redis=fakeredis.FakeAsyncRedis())
    with caplog.at_level(logging.INFO, logger="service.access"):
        async with running_app(app) as http:
            given = await http.get(RUNNING, headers={"X-Request-ID": "dash-7", "User-Agent": "dash/1.0"})
            fresh = await http.get(f"{RUNNING}?a=1", headers={"X-Request-ID": "bad id"})
            missing = await http.get("/nope")
            await http.post(RUNNING)
    assert given.headers["x-request-id"] == "dash-7"
    assert UUID.fullmatch(fresh.headers["x-request-id"])
    assert UUID.fullmatch(missing.headers["x-request-id"])
    assert fresh.headers["x-request-id"] != missing.headers["x-request-id"]
    lines = access_records(caplog)
    assert [(f["method"], f["path"], f["status"]) for f in lines] == [
        ("GET", RUNNING, 200),
        ("GET", f"{RUNNING}?a=***", 200),
        ("GET", "/nope", 404),
        ("POST", RUNNING, 405),
    ]
    assert lines[0]["request_id"] == "dash-7"
    assert lines[1]["request_id"] == fresh.headers["x-request-id"]
    assert lines[0]["user_agent"] == "dash/1.0"
    assert lines[0]["client"] == "127.0.0.1"
    assert lines[0]["bytes"] == int(given.headers["content-length"])  # what went over the wire
    assert all(f["duration_ms"] >= 0 for f in lines)


@pytest.mark.anyio
async def test_access_log_can_be_switched_off(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(settings_from_mapping({"logging": {"access_log": False}}), redis=fakeredis.FakeAsyncRedis())
    with caplog.at_level(logging.INFO, logger="service.access"):
        async with running_app(app) as http:
            response = await http.get(RUNNING)
    assert access_records(caplog) == []
    assert "x-request-id" in response.headers  # the id is still given


def _record(message: str, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("service.test", logging.WARNING, __file__, 1, message, (), None)
    record.created = 1795824000.123
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_plain_format() -> None:
    fields = {"method": "GET", "path": "/x", "status": 200, "request_id": "r1"}
    access = _record('127.0.0.1 "GET /x" 200 1.00ms 10B request_id=r1', fields=fields)
    assert PlainFormatter().format(access) == (
        '2026-11-28T00:00:00.123Z WARNING service.test: 127.0.0.1 "GET /x" 200 1.00ms 10B request_id=r1'
    )
    token = request_id_var.set("r2")
    try:
        other = PlainFormatter().format(_record("something happened"))
    finally:
        request_id_var.reset(token)
    assert other == "2026-11-28T00:00:00.123Z WARNING service.test: something happened request_id=r2"
    assert PlainFormatter().format(_record("outside a request")).endswith("outside a request")


def test_log_times_are_datetime_s_to_the_millisecond() -> None:
    # the milliseconds are rounded to the microsecond first, as datetime does: a float's .123 may be .1229999
    rng = random.Random(7)
    times = [1795824000.123, 1795824000.9999996, 1795824000.0004999, 1795824000.0]
    times += [rng.uniform(1.7e9, 1.9e9) for _ in range(20_000)]
    times += [round(rng.uniform(1.7e9, 1.9e9), 3) for _ in range(20_000)]
    for created in times:
        expected = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        assert format_time(created) == expected, created


def test_json_format() -> None:
    fields = {"method": "GET", "path": "/x", "status": 200, "duration_ms": 1.5, "client": "::1", "request_id": "r1"}
    line = JsonFormatter().format(_record("access", fields=fields))
    assert orjson.loads(line) == {
        "time": "2026-11-28T00:00:00.123Z",
        "level": "warning",
        "logger": "service.test",
        "message": "access",
        **fields,
    }
    try:
        raise ValueError("bad")
    except ValueError:
        failed = _record("failed", request_id="r3", exc_info=sys.exc_info())
    data = orjson.loads(JsonFormatter().format(failed))
    assert data["request_id"] == "r3"
    assert "ValueError: bad" in data["exc"]
    assert "\n" not in JsonFormatter().format(failed)  # one line, whatever the traceback


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    names = ("service", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = (
        root.handlers[:],
        root.level,
        [
            (
                logging.getLogger(n).handlers[:],
                logging.getLogger(n).level,
                logging.getLogger(n).propagate,
                logging.getLogger(n).disabled,
            )
            for n in names
        ],
    )
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, (handlers, level, propagate, disabled) in zip(names, saved[2], strict=True):
        log = logging.getLogger(name)
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate
        log.disabled = disabled


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_sends_everything_through_one_format() -> None:
    stream = io.StringIO()
    settings = settings_from_mapping({"logging": {"format": "json"}, "server": {"log_level": "debug"}})
    configure_logging(settings, stream)
    logging.getLogger("service.snapshot.refresher").debug("refresh %d done", 3)
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.access").info("uvicorn's own access line")
    logging.getLogger("apscheduler").info("library chatter below warning")
    logging.getLogger("apscheduler").warning("library warning")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(d["logger"], d["message"]) for d in lines] == [
        ("service.snapshot.refresher", "refresh 3 done"),
        ("uvicorn.error", "Started server process"),
        ("apscheduler", "library warning"),
    ]


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_plain_and_no_access_line_at_all_when_ours_is_off() -> None:
    stream = io.StringIO()
    configure_logging(settings_from_mapping({"logging": {"access_log": False}}), stream)
    logging.getLogger("service.snapshot.refresher").debug("not at info level")
    logging.getLogger("uvicorn.access").info("uvicorn's own access line")  # not written instead of ours
    logging.getLogger("uvicorn.error").info("Started server process")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("INFO uvicorn.error: Started server process")


@pytest.mark.real_redis
def test_the_procfile_service_logs_json_once_per_request_and_trusts_no_proxy_by_itself(redis_url: str) -> None:
    token = "procfile-token-0123456789"
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PORT": str(port),
        "SERVICE__LOGGING__FORMAT": "json",
        "SERVICE__AUTH__TOKENS": token,
    }
    root = Path(__file__).resolve().parents[2]
    procfile = (root / "Procfile").read_text().split(":", 1)[1].strip()
    command = procfile.replace("python", sys.executable, 1).replace("0.0.0.0", "127.0.0.1")
    server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    try:
        first_answer(server, f"http://127.0.0.1:{port}/healthz", timeout=15)
        # uvicorn on its own would believe X-Forwarded-For from 127.0.0.1; with no trusted_proxies, nobody is
        forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "procfile-1"}
        ok = httpx.get(f"http://127.0.0.1:{port}{RUNNING}", headers={**forwarded, "Authorization": f"Bearer {token}"})
        denied = httpx.get(f"http://127.0.0.1:{port}{RUNNING}", headers={"Authorization": "Bearer wrong-0123456789"})
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=10)
    assert (ok.status_code, denied.status_code) == (200, 401)
    lines = [orjson.loads(line) for line in stderr.splitlines()]  # every line of the process is JSON
    access = [line for line in lines if line["logger"] == "service.access" and line["path"] == RUNNING]
    assert [(line["status"], line["client"]) for line in access] == [(200, "127.0.0.1"), (401, "127.0.0.1")]
    assert access[0]["request_id"] == "procfile-1"
    assert not any(line["logger"] == "uvicorn.access" for line in lines)
    assert any(line["logger"] == "uvicorn.error" for line in lines)  # uvicorn's own lines, in our format
    assert token not in stderr and "wrong-0123456789" not in stderr


def _scope(path: str = RUNNING, query: bytes = b"", client: str = "10.0.0.7") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"user-agent", b"dash/2.0")],
        "client": (client, 5000),
    }


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("form", ["plain", "json"])
def test_access_lines_written_directly_are_the_lines_a_record_would_make(form: str) -> None:
    stream = io.StringIO()
    configure_logging(settings_from_mapping({"logging": {"format": form}}), stream)
    scope = _scope(query=b"token=s3cret&clientId=a%0A")
    write_access_line(scope, 304, 0, 0.0004567, "id-1")  # the handler alone on the root: written directly
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)  # someone else listens: a record, formatted by the same handler
    try:
        write_access_line(scope, 304, 0, 0.0004567, "id-1")
    finally:
        logging.getLogger().removeHandler(other)
    direct, recorded = stream.getvalue().splitlines()
    time_of = (lambda line: line[:24]) if form == "plain" else (lambda line: orjson.loads(line)["time"])
    assert direct.replace(time_of(direct), "T") == recorded.replace(time_of(recorded), "T")
    assert "s3cret" not in direct and "\n" not in direct
    if form == "json":
        fields = orjson.loads(direct)
        assert (fields["client"], fields["user_agent"], fields["status"]) == ("10.0.0.7", "dash/2.0", 304)
        assert fields["path"] == f"{RUNNING}?token=***&clientId=a%0A"
    else:
        assert direct.endswith(
            f'INFO service.access: 10.0.0.7 "GET {RUNNING}?token=***&clientId=a%0A" 304 0.46ms 0B request_id=id-1'
        )


@pytest.mark.anyio
@pytest.mark.usefixtures("restore_logging")
async def test_repeated_requests_share_their_words_and_any_difference_shows() -> None:
    stream = io.StringIO()
    configure_logging(settings_from_mapping({"logging": {"format": "json"}}), stream)
    other_agent = {**_scope(), "headers": [(b"user-agent", b"curl/8.0")]}
    scopes = [_scope(), _scope(), _scope(client="10.0.0.8"), other_agent, _scope(query=b"pageSize=5"), _scope("/x")]
    for number, scope in enumerate(scopes):
        write_access_line(scope, 200, 10, 0.0012345, f"id-{number}")
    assert stream.getvalue() == ""  # kept until the write (within 50 ms, or before another line)
    logging.getLogger("service.snapshot.refresher").warning("flush")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()[:-1]]
    seen = [(line["client"], line["user_agent"], line["path"], line["request_id"]) for line in lines]
    assert seen == [
        ("10.0.0.7", "dash/2.0", RUNNING, "id-0"),
        ("10.0.0.7", "dash/2.0", RUNNING, "id-1"),
        ("10.0.0.8", "dash/2.0", RUNNING, "id-2"),
        ("10.0.0.7", "curl/8.0", RUNNING, "id-3"),
        ("10.0.0.7", "dash/2.0", f"{RUNNING}?pageSize=5", "id-4"),
        ("10.0.0.7", "dash/2.0", "/x", "id-5"),
    ]
    assert {line["duration_ms"] for line in lines} == {1.234}  # the JSON field: to the microsecond
    assert lines[0]["message"].endswith(" 200 1.23ms 10B request_id=id-0")


@pytest.mark.anyio
@pytest.mark.usefixtures("restore_logging")
async def test_access_lines_go_out_together_and_in_order_with_other_lines() -> None:
    stream = io.StringIO()
    configure_logging(settings_from_mapping({}), stream)
    for number in range(3):
        write_access_line(_scope(f"/a{number}"), 200, 10, 0.001, f"id-{number}")
    assert stream.getvalue() == ""  # waiting for the end of the loop iteration
    logging.getLogger("service.snapshot.refresher").warning("a record flushes the lines before it")
    write_access_line(_scope("/after"), 200, 10, 0.001, "id-after")
    lines = stream.getvalue().splitlines()
    assert [line.split('"')[1] for line in lines[:3]] == ["GET /a0", "GET /a1", "GET /a2"]
    assert lines[3].endswith("a record flushes the lines before it")
    assert len(lines) == 4
    await asyncio.sleep(0.1)
    assert stream.getvalue().splitlines()[4].endswith("request_id=id-after")


@pytest.mark.usefixtures("restore_logging")
def test_uvicorn_s_access_logger_is_off_entirely_with_ours_on_or_off() -> None:
    configure_logging(settings_from_mapping({}), io.StringIO())
    # uvicorn formats its line's arguments whenever the logger has a handler up its chain, even when disabled
    assert not logging.getLogger("uvicorn.access").hasHandlers()
    configure_logging(settings_from_mapping({"logging": {"access_log": False}}), io.StringIO())
    assert not logging.getLogger("uvicorn.access").hasHandlers()
    assert logging.getLogger("uvicorn.access").disabled


def test_new_request_ids_are_distinct_uuids() -> None:
    ids = {accept_request_id(None) for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(UUID.fullmatch(value) for value in ids)


def test_a_forked_worker_starts_a_series_of_its_own() -> None:
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a uvicorn worker would hand out
        try:
            os.write(writer, accept_request_id(None).encode())
        finally:
            os._exit(0)
    os.close(writer)
    os.waitpid(pid, 0)
    child = os.read(reader, 64).decode()
    os.close(reader)
    parent = accept_request_id(None)
    assert UUID.fullmatch(child) and UUID.fullmatch(parent)
    assert child[:24] != parent[:24]  # another random prefix, not the parent's next number
