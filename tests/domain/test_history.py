"""The finished-task history: records from departures, bounds, order, the finished list's query; and the
transitions that feed it, end to end against a real redis-server (finishing, failing, expiring, reappearing)."""

from __future__ import annotations

import asyncio

import httpx
import msgspec
import orjson
import pytest
import redis.asyncio as aioredis

from service.domain.history import History
from service.domain.tasks import StoredTask
from service.domain.times import format_time
from service.domain.tracker import Departure, TaskView, Tracker
from service.domain.vocabulary import outcome_of
from service.http.app import create_app
from service.query.finished import (
    FinishedQuery,
    finished_record,
    parse_finished_query,
    render_finished,
    select_finished,
)
from service.query.params import Paging, QueryError
from service.source.redis_source import KeyMeta, RedisSource
from service.source.scanner import Scanner
from tests.conftest import make_settings, running_app

T0 = 1_795_000_000_000
FINISHED = "/codebase-embedder/api/v1/tasks/finished"
RUNNING = "/codebase-embedder/api/v1/tasks/running"


def view(task_id: str, start_ms: int = T0, client_id: str = "", progress: int = 40) -> TaskView:
    return TaskView(task_id, client_id, "processing", progress, start_ms, start_ms, None, 3, b"[]")


def stored(task_id: str, process: str, **kw: object) -> StoredTask:
    fields: dict[str, object] = {
        "task_id": task_id,
        "process": process,
        "total_progress": 100,
        "file_list": b"[]",
        "file_count": 4,
        "client_id": "",
        "start_ms": None,
        "update_ms": None,
    }
    fields.update(kw)
    return StoredTask(**fields)  # type: ignore[arg-type]


def departed(task_id: str, status: str | None, start_ms: int, end_ms: int, client_id: str = "") -> Departure:
    final = None if status is None else stored(task_id, status)
    last_seen = end_ms if status is None else end_ms - 500
    return Departure(view(task_id, start_ms, client_id), last_seen, final, end_ms)


def test_outcomes() -> None:
    assert [outcome_of(s) for s in ("complete", "completed", "failed", None, "cancelled")] == [
        "completed",
        "completed",
        "failed",
        "vanished",
        "other",
    ]


def test_a_record_from_a_departure() -> None:
    history = History(10, clock=lambda: T0 + 9_000)
    history.record([departed("a", "complete", T0, T0 + 5_000, client_id="c1")])
    (record,) = history.newest_first()
    assert (record.outcome, record.status, record.duration_ms, record.file_count) == ("completed", "complete", 5000, 4)
    assert msgspec.to_builtins(finished_record(record)) == {
        "taskId": "a",
        "clientId": "c1",
        "outcome": "completed",
        "status": "complete",
        "totalProgress": 100,
        "fileCount": 4,
        "startTime": format_time(T0),
        "endTime": format_time(T0 + 5_000),
        "durationMs": 5000,
        "lastSeenRunningTime": format_time(T0 + 4_500),
        "detectedTime": format_time(T0 + 9_000),
    }


def test_a_vanished_record_keeps_what_was_last_seen() -> None:
    history = History(10)
    history.record([departed("v", None, T0, T0 + 7_000)])
    record = history.latest("v")
    assert record is not None
    assert (record.outcome, record.status, record.total_progress, record.file_count) == (
        "vanished",
        "processing",
        40,
        3,
    )
    assert record.end_ms == record.last_seen_ms == T0 + 7_000


def test_duration_is_never_negative() -> None:
    history = History(10)
    history.record([departed("skew", "completed", T0 + 10_000, T0)])  # producer clock behind ours
    assert history.newest_first()[0].duration_ms == 0


def test_bounded_oldest_detected_go_first_totals_keep_counting() -> None:
    history = History(3)
    history.record([departed(f"t{i}", "completed", T0, T0 + i * 1000) for i in range(5)])
    assert len(history) == 3
    assert [r.task_id for r in history.newest_first()] == ["t4", "t3", "t2"]
    assert history.evicted == 2
    assert history.evicted_newest_end_ms == T0 + 1000
    assert history.totals["completed"] == 5
    assert history.latest("t0") is None and history.latest("t4") is not None


def test_newest_end_first_ties_by_latest_detection() -> None:
    history = History(10)
    history.record([departed("late-end", "failed", T0, T0 + 9_000), departed("tie-1", "completed", T0, T0 + 5_000)])
    history.record([departed("tie-2", None, T0, T0 + 5_000), departed("early-end", "completed", T0, T0 + 1_000)])
    assert [r.task_id for r in history.newest_first()] == ["late-end", "tie-2", "tie-1", "early-end"]


def test_runs_of_the_same_task_are_separate_records() -> None:
    history = History(10)
    history.record([departed("a", "completed", T0, T0 + 1_000)])
    version = history.version
    history.record([departed("a", "failed", T0 + 5_000, T0 + 8_000)])
    assert history.version != version
    assert [r.outcome for r in history.newest_first()] == ["failed", "completed"]
    latest = history.latest("a")
    assert latest is not None and latest.outcome == "failed"


def test_nothing_recorded_leaves_the_version() -> None:
    history = History(10)
    history.record([])
    assert history.version == 0


# -- the finished list's query ------------------------------------------------------------------------------


def params(query: str) -> list[tuple[str, str]]:
    return [tuple(part.split("=", 1)) for part in query.split("&") if part]  # type: ignore[misc]


def sample_history() -> History:
    history = History(100)
    history.record(
        [
            departed("c1-done", "completed", T0, T0 + 60_000, client_id="c1"),
            departed("c1-fail", "failed", T0, T0 + 30_000, client_id="c1"),
            departed("c2-gone", None, T0, T0 + 90_000, client_id="c2"),
            departed("c2-done", "complete", T0 + 10_000, T0 + 20_000, client_id="c2"),
            departed("old", "completed", T0, T0 + 10_000),
        ]
    )
    return history


def ids(history: History, query: str) -> list[str]:
    return [r.task_id for r in select_finished(history.newest_first(), parse_finished_query(params(query)))]


def test_finished_filters_and_sorts() -> None:
    history = sample_history()
    assert ids(history, "") == ["c2-gone", "c1-done", "c1-fail", "c2-done", "old"]
    assert ids(history, "status=completed") == ["c1-done", "c2-done", "old"]
    assert ids(history, "status=complete") == ["c1-done", "c2-done", "old"]  # the producer's other spelling
    assert ids(history, "status=failed,vanished") == ["c2-gone", "c1-fail"]
    assert ids(history, "status=failed&status=vanished") == ["c2-gone", "c1-fail"]
    assert ids(history, "clientId=c2") == ["c2-gone", "c2-done"]
    assert ids(history, "clientId=c1&status=failed") == ["c1-fail"]
    assert ids(history, f"endedAfter={T0 + 30_000}") == ["c2-gone", "c1-done", "c1-fail"]  # inclusive
    assert ids(history, f"endedBefore={T0 + 30_000}") == ["c2-done", "old"]  # exclusive
    assert ids(history, "sort=durationMs") == ["c2-done", "old", "c1-fail", "c1-done", "c2-gone"]
    assert ids(history, "sort=taskId") == sorted(ids(history, ""))
    assert ids(history, "sort=-startTime,taskId") == ["c2-done", "c1-done", "c1-fail", "c2-gone", "old"]


def test_finished_is_always_paged() -> None:
    assert parse_finished_query([]).paging == Paging(1, 100)
    history = sample_history()
    body = orjson.loads(render_finished(history, parse_finished_query(params("pageSize=2&page=2"))))
    data = body["data"]
    assert (data["totalTasks"], data["page"], data["pageSize"], data["totalPages"]) == (5, 2, 2, 3)
    assert [t["taskId"] for t in data["tasks"]] == ["c1-fail", "c2-done"]
    assert data["historySince"] == format_time(history.started_ms)
    assert data["historySize"] == 100
    past_the_end = orjson.loads(render_finished(history, FinishedQuery(paging=Paging(9, 2))))["data"]
    assert (past_the_end["tasks"], past_the_end["totalPages"]) == ([], 3)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("status=running", "status"),
        ("status=completed,bogus", "status"),
        ("endedAfter=yesterday", "endedAfter"),
        ("endedAfter=2026-11-28T02:00:00Z&endedBefore=2026-11-28T01:00:00Z", "endedBefore"),
        ("sort=progress", "sort"),
        ("page=0", "page"),
        ("pageSize=1001", "pageSize"),
        ("page=1&page=2", "page"),
    ],
)
def test_finished_query_errors_name_the_parameter(query: str, parameter: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_finished_query(params(query))
    assert caught.value.parameter == parameter


# -- transitions, end to end on a real redis-server ---------------------------------------------------------


def value(progress: int, process: str = "processing") -> bytes:
    return orjson.dumps(
        {
            "process": process,
            "totalProgress": progress,
            "fileList": [{"path": "a", "status": "pending", "operate": "add"}],
        }
    )


async def finished_by_id(http: httpx.AsyncClient) -> dict[str, list[dict[str, object]]]:
    response = await http.get(FINISHED, params={"pageSize": 1000})
    assert response.status_code == 200
    records: dict[str, list[dict[str, object]]] = {}
    for record in response.json()["data"]["tasks"]:
        records.setdefault(record["taskId"], []).append(record)
    return records


@pytest.mark.real_redis
@pytest.mark.anyio
async def test_transitions_feed_the_history(redis_url: str) -> None:
    async with aioredis.Redis.from_url(redis_url) as client:
        for task_id in ("finishes", "finishes-2", "fails", "expires", "deleted", "stays", "turns-junk"):
            await client.set(f"request:id:{task_id}", value(40), ex=3600)
        await client.set("request:id:done-before", value(100, "completed"), ex=3600)
        app = create_app(make_settings(url=redis_url, refresh_interval=60))
        refresher = app.state.refresher
        async with running_app(app) as http:  # the startup scan sees seven running tasks
            assert (await http.get(RUNNING)).json()["data"]["totalTasks"] == 7
            await client.set("request:id:finishes", value(100, "completed"), ex=3600)
            await client.set("request:id:finishes-2", value(100, "complete"), ex=3600)
            await client.set("request:id:fails", value(60, "failed"), ex=3600)
            await client.pexpire("request:id:expires", 1)  # the producer died: the key runs out mid-run
            await client.delete("request:id:deleted")
            await client.set("request:id:turns-junk", b"\x00 not json", ex=3600)
            await asyncio.sleep(0.05)
            await refresher.refresh()
            records = await finished_by_id(http)
            assert {task_id: [r["outcome"] for r in runs] for task_id, runs in records.items()} == {
                "finishes": ["completed"],
                "finishes-2": ["completed"],
                "fails": ["failed"],
                "expires": ["vanished"],
                "deleted": ["vanished"],
                "turns-junk": ["vanished"],
            }
            assert records["finishes-2"][0]["status"] == "complete"
            assert records["fails"][0]["totalProgress"] == 60
            assert records["expires"][0]["status"] == "processing"
            assert (await http.get(RUNNING)).json()["data"]["totalTasks"] == 1  # "stays"

            await refresher.refresh()  # the finished keys are still there, unchanged: nothing new
            assert await finished_by_id(http) == records

            # the same id running again is a new run, and its end a second record
            await client.set("request:id:finishes", value(10), ex=3600)
            await refresher.refresh()
            assert (await http.get(f"{RUNNING}/finishes")).status_code == 200
            await client.set("request:id:finishes", value(100, "failed"), ex=3600)
            await refresher.refresh()
            runs = (await finished_by_id(http))["finishes"]
            assert [r["outcome"] for r in runs] == ["failed", "completed"]  # newest first
            assert runs[0]["startTime"] >= runs[1]["endTime"]
            missing = (await http.get(f"{RUNNING}/finishes")).json()
            assert missing["code"] == 404 and "failed" in missing["message"]


def recording(source: RedisSource) -> tuple[History, Tracker, Scanner]:
    """A scanner of `source` whose tracker records every departure in the history, as the service wires them."""
    history = History(10)
    tracker = Tracker(3600, on_departures=history.record)
    return history, tracker, Scanner(source, make_settings().running_tasks, finished_sink=tracker.observe_finished)


class FailingSource(RedisSource):
    fail = False

    async def read(self, metas: list[KeyMeta]) -> list[bytes | None]:
        if self.fail:
            raise ConnectionError("lost mid-scan")
        return await super().read(metas)


@pytest.mark.real_redis
def test_only_a_complete_scan_declares_a_task_vanished(redis_url: str) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            await client.set("request:id:a", value(10), ex=3600)
            await client.set("request:id:b", value(10), ex=3600)
            source = FailingSource(client, fetch_max_bytes=make_settings().running_tasks.fetch_max_bytes)
            history, tracker, scanner = recording(source)

            async def scan() -> None:
                tracker.begin_scan()
                await scanner.scan(tracker.observe)
                tracker.end_scan()

            await scan()
            await client.delete("request:id:a")
            await client.set("request:id:b", value(100, "completed"), ex=3600)
            source.fail = True
            with pytest.raises(ConnectionError):
                await scan()
            assert len(history) == 0  # a scan that did not finish declares nothing
            source.fail = False
            await scan()
        assert sorted((r.task_id, r.outcome) for r in history.newest_first()) == [("a", "vanished"), ("b", "completed")]

    asyncio.run(main())


@pytest.mark.real_redis
def test_a_batch_after_a_scan_read_the_same_finished_value_records_its_outcome(redis_url: str) -> None:
    # The race once seen in CI: a full scan reads a task's finished value and ends, and a change feed's batch for
    # that write reads it before the tracker takes the scan's end in. The scanner's memory already knows the value;
    # the batch must report it as finished all the same, or the task departs as vanished.
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            await client.set("request:id:b", value(10), ex=3600)
            source = RedisSource(client, fetch_max_bytes=make_settings().running_tasks.fetch_max_bytes)
            history, tracker, scanner = recording(source)
            tracker.begin_scan()
            await scanner.scan(tracker.observe)
            tracker.end_scan()
            await client.set("request:id:b", value(60, "failed"), ex=3600)
            tracker.begin_scan()
            await scanner.scan(tracker.observe)  # reads "failed": the scanner's memory knows it from here
            reads = await scanner.read_keys([b"request:id:b"])  # the batch, before the scan's end is taken in
            tracker.apply(reads.running, reads.finished, reads.absent)
            tracker.end_scan()
            again = await scanner.read_keys([b"request:id:b"])  # the same value announced again: nothing more
            tracker.apply(again.running, again.finished, again.absent)
        assert [(r.task_id, r.outcome) for r in history.newest_first()] == [("b", "failed")]

    asyncio.run(main())


def test_a_run_never_ends_before_it_starts() -> None:
    # the finished value's producer start is after its end (a clock ahead): the start is clamped to the end
    history = History(10, clock=lambda: T0 + 9_000)
    final = stored("a", "completed", start_ms=T0 + 8_000)
    history.record([Departure(view("a", T0), T0 + 4_000, final, T0 + 5_000)])
    (record,) = history.newest_first()
    assert (record.start_ms, record.end_ms, record.duration_ms) == (T0 + 5_000, T0 + 5_000, 0)
