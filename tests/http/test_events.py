"""The event stream and `since=` end to end: `python -m service serve` on a real redis-server, the simulator as
producer, read over HTTP as a dashboard would. Applying the `snapshot` event and then every `changes` event must
give, task by task and byte for byte, the running list's tasks at the same generation."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.devtools.embedded import RedisServerProcess
from service.devtools.simulator import SimTask, Simulator
from tests.conftest import start_serve, stop_serve

TOKEN = "events-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/codebase-embedder/api/v1/tasks"
RUNNING = f"{API}/running"
EVENTS = f"{RUNNING}/events"
HELD = 40
MAX_STREAMS = 6
QUEUE = 4
CLIENTS = ("client-a", "client-b")
# (query parameters) -> the views a dashboard would watch
VIEWS: tuple[dict[str, str], ...] = (
    {},
    {"fileList": "none"},
    {"fileList": "summary"},
    {"fields": "taskId,totalProgress,status"},
    {"clientId": CLIENTS[0]},
    {"status": "processing", "fileList": "none"},
    {"stalled": "false", "fields": "taskId,stalled,lastUpdateTime"},
)


class _Listed(msgspec.Struct):
    tasks: list[msgspec.Raw]


class _Envelope(msgspec.Struct):
    data: _Listed


class _Removed(msgspec.Struct):
    taskId: str
    outcome: str


class _Changes(msgspec.Struct):
    generation: int
    upserted: list[msgspec.Raw]
    removed: list[_Removed]
    reset: bool = False


class _Snapshot(msgspec.Struct):
    generation: int
    totalTasks: int
    tasks: list[msgspec.Raw]


class _Id(msgspec.Struct):
    taskId: str


def _by_id(raws: list[msgspec.Raw]) -> dict[str, bytes]:
    return {msgspec.json.decode(raw, type=_Id).taskId: bytes(raw) for raw in raws}


@dataclass
class Event:
    kind: str  # snapshot, changes, or "heartbeat", "retry", "end"
    id: int | None = None
    data: bytes = b""


@dataclass
class Held:
    """What a dashboard holds: the tasks by id, as applied from the events."""

    tasks: dict[str, bytes] = field(default_factory=dict)
    generation: int = -1
    kinds: list[str] = field(default_factory=list)

    def apply(self, event: Event) -> None:
        assert event.id is not None and event.id > self.generation, (event.id, self.generation)  # generation order
        self.kinds.append(event.kind)
        if event.kind == "snapshot":
            snapshot = msgspec.json.decode(event.data, type=_Snapshot)
            assert snapshot.generation == event.id and snapshot.totalTasks == len(snapshot.tasks)
            self.tasks = _by_id(snapshot.tasks)
        else:
            changes = msgspec.json.decode(event.data, type=_Changes)
            assert changes.generation == event.id
            for removed in changes.removed:
                assert removed.outcome in ("completed", "failed", "vanished", "other", "filtered-out")
                self.tasks.pop(removed.taskId, None)
            self.tasks.update(_by_id(changes.upserted))
        self.generation = event.id


class Stream:
    """An event stream read in a thread, its events in a queue."""

    def __init__(self, base: str, params: dict[str, str], headers: dict[str, str] | None = None) -> None:
        self.client = httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=60))
        self._context = self.client.stream("GET", EVENTS, params=params, headers={**AUTH, **(headers or {})})
        self.response = self._context.__enter__()
        self.events: queue.Queue[Event] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind, ident, data = "", None, b""
        try:
            for line in self.response.iter_lines():
                if line.startswith(":"):
                    self.events.put(Event("heartbeat"))
                elif line.startswith("retry: "):
                    self.events.put(Event("retry", int(line[7:])))
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("id: "):
                    ident = int(line[4:])
                elif line.startswith("data: "):
                    data = line[6:].encode()
                elif line == "" and kind:
                    self.events.put(Event(kind, ident, data))
                    kind, ident, data = "", None, b""
        except (httpx.HTTPError, ValueError):
            pass
        self.events.put(Event("end"))

    def next(self, timeout: float = 30, skip: tuple[str, ...] = ("heartbeat", "retry")) -> Event:
        """The next event not of a `skip` kind, within `timeout` s in all (heartbeats do not extend it: a stream
        that only ever heartbeats fails the test instead of holding it)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no event but {', '.join(skip)} within {timeout:.0f} s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                raise AssertionError(f"no event but {', '.join(skip)} within {timeout:.0f} s") from None
            if event.kind not in skip:
                return event

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self.client.close()


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    base: str
    redis: redis.Redis
    log: Path

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.base + path, params=params, headers=AUTH, timeout=30)

    def streams(self) -> dict[str, Any]:
        info: dict[str, Any] = self.get(f"{API}/cache-stats").json()["data"]["streams"]
        return info

    def wait_streams_closed(self) -> dict[str, Any]:
        deadline = time.monotonic() + 30  # a hang detector, not a timing requirement
        while True:
            info = self.streams()
            if info["open"] == 0 or time.monotonic() > deadline:
                return info
            time.sleep(0.05)


def _start(redis_url: str, tmp_path: Path, extra: str = "") -> tuple[subprocess.Popen[bytes], str, Path]:
    return start_serve(
        redis_url,
        tmp_path,
        f'[auth]\ntokens = ["{TOKEN}"]\n'
        "[running_tasks]\nrefresh_interval = 0.2\nproducer_key_ttl = 0\n"
        f'change_feed = "{os.environ.get("TEST_CHANGE_FEED", "auto")}"\n'
        f"[events]\nmax_streams = {MAX_STREAMS}\nheartbeat_seconds = 0.5\nretry_ms = 1500\n"
        f"queue_events = {QUEUE}\nheld_generations = {HELD}\n{extra}",
    )


@pytest.fixture(scope="module")
def service(redis_server: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    process, base, log = _start(redis_server.url, tmp_path_factory.mktemp("events"))
    yield Service(process, base, client, log)
    stop_serve(process)
    client.close()
    assert "Traceback" not in log.read_text(), log.read_text()


class Producer:
    """The simulator driven one operation at a time, with synchronous writes."""

    def __init__(self, client: redis.Redis, seed: int) -> None:
        self.client = client
        self.sim = Simulator(seed, files=3, newer_producer_fraction=1.0)
        self.tasks: list[SimTask] = []

    def apply(self, operation: tuple[str, int]) -> None:
        kind, index = operation
        now = int(time.time() * 1000)
        if kind == "new" or not self.tasks:
            task = self.sim.new_task()
            task.client_id = CLIENTS[index % 2]
            self.tasks.append(task)
            self._write(task, now)
            return
        task = self.tasks[index % len(self.tasks)]
        if kind == "advance":
            self.sim.advance(task)
            self._write(task, now)
        elif kind == "fail":
            task.process = "failed"
            self._write(task, now)
        elif kind == "delete":
            self.client.delete(task.key())
        if kind == "delete" or not task.running:
            self.tasks.remove(task)

    def _write(self, task: SimTask, now: int) -> None:
        if task.start_ms is None:
            task.start_ms = now
        self.client.set(task.key(), task.value(now), ex=3600)


def _listed(service: Service, params: dict[str, str]) -> tuple[int, dict[str, bytes]]:
    answer = service.get(RUNNING, **params)
    assert answer.status_code == 200, answer.text
    return int(answer.headers["x-snapshot-generation"]), _by_id(
        msgspec.json.decode(answer.content, type=_Envelope).data.tasks
    )


def _agrees(stream: Stream, held: Held, service: Service, params: dict[str, str]) -> None:
    """Read events until what is held is the list's answer at a generation not later than the list's; an event
    past that generation first means the stream disagreed with the list."""
    generation, listed = _listed(service, params)
    while held.tasks != listed or held.generation > generation:
        assert held.generation <= generation, (
            f"at {generation} the list had {sorted(listed)}, the stream {sorted(held.tasks)}"
        )
        try:
            event = stream.next(timeout=1)
        except queue.Empty:
            generation, listed = _listed(service, params)  # a view changes no more: the list moved on, not the view
            continue
        assert event.kind != "end", "the stream ended"
        if event.id is not None and event.id > generation:
            generation, listed = _listed(service, params)
        held.apply(event)


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["new", "new", "advance", "advance", "advance", "fail", "delete"]), st.integers(0, 50)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(view=st.sampled_from(VIEWS), steps=st.lists(OPERATIONS, min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_snapshot_then_changes_reproduce_the_list(
    service: Service, view: dict[str, str], steps: list[Any], seed: int
) -> None:
    producer = Producer(service.redis, seed)
    stream = Stream(service.base, view)
    try:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        held = Held()
        first = stream.next(skip=("heartbeat",))
        assert (first.kind, first.id) == ("retry", 1500)
        held.apply(stream.next())
        assert held.kinds == ["snapshot"]
        for operations in steps:
            for operation in operations:
                producer.apply(operation)
            _agrees(stream, held, service, view)
    finally:
        stream.close()
        service.redis.flushall()
        service.wait_streams_closed()  # the next example must not find max_streams open


def test_stream_headers_heartbeats_and_outcomes(service: Service) -> None:
    producer = Producer(service.redis, 7)
    for _ in range(3):
        producer.apply(("new", 0))
    stream = Stream(service.base, {"fileList": "none"})
    try:
        headers = stream.response.headers
        assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
        held = Held()
        held.apply(stream.next())
        while len(held.tasks) < 3:  # (without the change feed, the next scan brings them)
            held.apply(stream.next())
        done, gone = producer.tasks[0], producer.tasks[1]
        done.process = "completed"
        producer._write(done, int(time.time() * 1000))
        service.redis.delete(gone.key())
        outcomes: dict[str, str] = {}
        while len(outcomes) < 2:
            event = stream.next()
            held.apply(event)
            outcomes.update((r.taskId, r.outcome) for r in msgspec.json.decode(event.data, type=_Changes).removed)
        assert outcomes == {done.task_id: "completed", gone.task_id: "vanished"}
        assert stream.next(skip=()).kind in ("heartbeat", "changes")  # idle: a comment within heartbeat_seconds
    finally:
        stream.close()
        service.redis.flushall()


def test_a_filtered_view_says_filtered_out(service: Service) -> None:
    producer = Producer(service.redis, 8)
    producer.apply(("new", 0))
    task = producer.tasks[0]
    task.process = "processing"
    producer._write(task, int(time.time() * 1000))
    stream = Stream(service.base, {"clientId": CLIENTS[0], "status": "processing"})
    try:
        held = Held()
        held.apply(stream.next())
        while task.task_id not in held.tasks:
            held.apply(stream.next())
        task.process = "pending"  # still running, no longer in the view
        producer._write(task, int(time.time() * 1000))
        event = stream.next()
        held.apply(event)
        removed = msgspec.json.decode(event.data, type=_Changes).removed
        assert [(r.taskId, r.outcome) for r in removed] == [(task.task_id, "filtered-out")]
    finally:
        stream.close()
        service.redis.flushall()


def test_since_answers_the_changes_or_a_reset(service: Service) -> None:
    producer = Producer(service.redis, 9)
    for _ in range(4):
        producer.apply(("new", 1))
    params = {"fileList": "summary"}
    generation, held = _listed(service, params)
    while len(held) < 4:  # (without the change feed, the next scan brings them)
        generation, held = _listed(service, params)
    for operation in [("advance", 0), ("fail", 1), ("delete", 2), ("new", 0)]:
        producer.apply(operation)
    for _ in range(200):
        answer = service.get(RUNNING, since=str(generation), **params)
        assert answer.status_code == 200 and answer.headers["etag"]
        again = httpx.get(
            service.base + RUNNING,
            params={"since": str(generation), **params},
            headers={**AUTH, "If-None-Match": answer.headers["etag"]},
        )
        # the same answer is a 304; a different one (a scan came in between) has another tag
        assert again.status_code == 304 or again.headers["etag"] != answer.headers["etag"]
        delta = msgspec.json.decode(answer.content, type=dict[str, Any])["data"]
        assert delta["reset"] is False and set(delta) == {"generation", "upserted", "removed", "reset"}
        parsed = msgspec.json.decode(msgspec.json.encode(delta), type=_Changes)
        for removed in parsed.removed:
            held.pop(removed.taskId, None)
        held.update(_by_id(parsed.upserted))
        generation = parsed.generation
        listed_generation, listed = _listed(service, params)
        running = {task.task_id for task in producer.tasks}  # what the producer left running
        if listed_generation == generation and listed == held and set(held) == running:
            break
    else:
        pytest.fail(f"since= never caught up with the list: at {generation}, {sorted(held)}")
    reset = service.get(RUNNING, since="999999999999", **params).json()["data"]
    assert reset["reset"] is True and reset["removed"] == []
    assert {task["taskId"] for task in reset["upserted"]} == set(held)
    refused = service.get(RUNNING, since="soon")
    assert refused.status_code == 400 and refused.json()["data"]["parameter"] == "since"
    assert service.get(RUNNING, since="1", page="1").status_code == 400
    service.redis.flushall()


def test_last_event_id_resumes_within_the_log_and_resets_beyond(service: Service) -> None:
    producer = Producer(service.redis, 10)
    producer.apply(("new", 0))
    first = producer.tasks[0].task_id
    # The stream starts from a snapshot holding the new task. Opened before the feed's batch installed it (20 ms),
    # it held nothing, and the resumed stream then had nothing to say: both tasks below come and go, a net change
    # of nothing for a view that never held them, so no event came (seen in CI, about one run in five here).
    deadline = time.monotonic() + 30
    while first not in _listed(service, {})[1]:
        assert time.monotonic() < deadline, "the service never listed the new task"
        time.sleep(0.02)
    stream = Stream(service.base, {})
    held = Held()
    held.apply(stream.next())
    assert first in held.tasks
    stream.close()
    for operation in [("new", 1), ("advance", 0), ("advance", 0)]:
        producer.apply(operation)
    resumed = Stream(service.base, {}, {"Last-Event-ID": str(held.generation)})
    try:
        try:
            event = resumed.next()
        except AssertionError as missing:  # seen once in CI (it hung then): say what the service held
            stats = service.get(f"{API}/cache-stats").json()["data"]
            listed = _listed(service, {})[1]
            raise AssertionError(
                f"{missing}; resumed from {held.generation}, the service at {stats['snapshot']['generation']}, "
                f"feed {stats['changeFeed']}, streams {stats['streams']}; held {sorted(held.tasks)}, "
                f"listed {sorted(listed)}, written {[task.task_id for task in producer.tasks]}"
            ) from missing
        assert event.kind == "changes"  # only what it missed
        held.apply(event)
        _agrees(resumed, held, service, {})
    finally:
        resumed.close()
    deadline = time.monotonic() + 60  # a hang detector: the log moves past generation 1 within seconds
    while service.get(f"{API}/cache-stats").json()["data"]["snapshot"]["generation"] <= HELD + 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for gone in ("1", "999999999999", "not-a-generation"):
        fresh = Stream(service.base, {}, {"Last-Event-ID": gone})
        try:
            assert fresh.next().kind == "snapshot"
        finally:
            fresh.close()
    service.redis.flushall()


def test_disconnects_leave_nothing_behind(service: Service) -> None:
    assert service.wait_streams_closed()["open"] == 0  # the tests before have closed theirs
    streams = [Stream(service.base, view) for view in ({}, {}, {"fileList": "none"})]
    for stream in streams:
        assert stream.next().kind == "snapshot"
    info = service.streams()
    assert (info["open"], info["views"], info["viewsShared"]) == (3, 2, 1)
    for stream in streams:
        stream.close()
    info = service.wait_streams_closed()
    assert (info["open"], info["views"], info["viewsShared"]) == (0, 0, 0)


def test_tokens_and_the_limit_on_streams(service: Service) -> None:
    denied = httpx.get(service.base + EVENTS, timeout=10)
    assert denied.status_code == 401 and denied.json()["code"] == 401
    bad = httpx.get(service.base + EVENTS, params={"fileList": "all"}, headers=AUTH, timeout=10)
    assert bad.status_code == 400 and bad.json()["data"]["parameter"] == "fileList"
    no_id = httpx.get(service.base + EVENTS, params={"fields": "totalProgress"}, headers=AUTH, timeout=10)
    assert no_id.status_code == 400
    service.wait_streams_closed()
    refused_before = service.streams()["refused"]
    streams = [Stream(service.base, {"fileList": "none"}) for _ in range(MAX_STREAMS)]
    try:
        for stream in streams:
            assert stream.next().kind == "snapshot"
        over = httpx.get(service.base + EVENTS, headers=AUTH, timeout=10)
        assert over.status_code == 503 and over.json()["code"] == 503
        assert over.headers["retry-after"] == "2"  # retry_ms = 1500, in whole seconds
        assert service.streams()["refused"] == refused_before + 1
    finally:
        for stream in streams:
            stream.close()
    assert service.wait_streams_closed()["open"] == 0


def test_metrics_count_the_streams(service: Service) -> None:
    stream = Stream(service.base, {})
    try:
        assert stream.next().kind == "snapshot"
        text = service.get("/metrics").text
        assert "running_tasks_streams_open 1.0" in text
        for name in ("stream_events_total", "stream_bytes_total", "stream_resets_total", "stream_views_shared"):
            assert f"running_tasks_{name}" in text
    finally:
        stream.close()
    service.wait_streams_closed()


def test_a_slow_reader_gets_a_reset_and_the_queue_stays_bounded(service: Service) -> None:
    before = service.streams()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that reads nothing fills up at once
    sock.connect(("127.0.0.1", int(service.base.rsplit(":", 1)[1])))
    sock.sendall(f"GET {EVENTS} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    sim = Simulator(11, files=400)
    tasks = [sim.new_task() for _ in range(40)]
    try:
        deadline = time.monotonic() + 60  # a hang detector
        while service.streams()["resets"] == before["resets"]:
            assert time.monotonic() < deadline, service.streams()
            now = int(time.time() * 1000)
            for task in tasks:
                task.progress = (task.progress + 1) % 100
                service.redis.set(task.key(), task.value(now), ex=3600)
            time.sleep(0.05)
        after = service.streams()
        assert after["eventsDropped"] > before["eventsDropped"]
        sock.settimeout(10)
        seen = b""
        while seen.count(b"event: snapshot") < 2:  # the first snapshot, then the reset's
            chunk = sock.recv(1 << 20)
            assert chunk, "the stream ended"
            seen += chunk[-(1 << 16) :] if len(seen) > (1 << 22) else chunk
    finally:
        sock.close()
        service.redis.flushall()
    assert service.wait_streams_closed()["open"] == 0


def test_sigterm_with_an_open_stream_exits_promptly(redis_url: str, tmp_path: Path) -> None:
    process, base, log = _start(redis_url, tmp_path)
    try:
        stream = Stream(base, {})
        assert stream.next().kind == "snapshot"
        process.send_signal(signal.SIGTERM)
        # a hang detector: uvicorn waits for open responses, which a stream never finishes by itself
        assert process.wait(timeout=30) == 0
        assert stream.next(skip=("heartbeat", "changes")).kind == "end"
        stream.close()
    finally:
        stop_serve(process)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_a_stream_counts_once_against_the_rate_limit(redis_url: str, tmp_path: Path) -> None:
    # a bucket of two requests that refills every 100 s: the stream is one of them, whatever it sends afterwards
    process, base, log = _start(redis_url, tmp_path, "[rate_limit]\nrequests_per_second = 0.01\nburst = 2\n")
    try:
        stream = Stream(base, {})
        try:
            assert stream.next().kind == "snapshot"
            for _ in range(3):  # heartbeats every 0.5 s and the changes of a live service: not requests
                assert stream.next(skip=("retry",)).kind in ("heartbeat", "changes")
            assert httpx.get(base + RUNNING, headers=AUTH, timeout=10).status_code == 200  # the second request
            refused = httpx.get(base + RUNNING, headers=AUTH, timeout=10)
            assert refused.status_code == 429 and refused.json()["code"] == 429
        finally:
            stream.close()
    finally:
        stop_serve(process)
    assert "Traceback" not in log.read_text(), log.read_text()
