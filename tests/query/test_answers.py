from __future__ import annotations

import asyncio

import orjson

from service.domain.history import History
from service.query.answers import QueryService
from service.query.finished import parse_finished_query
from service.query.project import Projection
from service.snapshot.snapshot import Snapshot, build_snapshot
from service.source.scanner import ScanStats
from tests.conftest import make_settings
from tests.domain.test_history import departed
from tests.query.test_running import T0, entry, json_of, make_view, params, sample


def service(**settings: object) -> QueryService:
    return QueryService(make_settings(**settings).running_tasks, History(100, clock=lambda: T0))


def snap(generation: int, tasks: list, previous: Snapshot | None = None) -> Snapshot:  # type: ignore[type-arg]
    return asyncio.run(build_snapshot(generation, tasks, ScanStats(), T0 + generation, previous, "p"))


def test_the_same_query_on_the_same_tasks_is_not_recomputed() -> None:
    queries = service()
    tasks = sample()
    first = snap(1, tasks)
    query = queries.parse_running(params("status=processing&pageSize=2"))
    a = queries.running(first, query)
    b = queries.running(first, queries.parse_running(params("pageSize=2&status=processing&ignored=1")))
    assert a is b
    same_tasks = snap(2, tasks, first)  # a refresh that changed nothing keeps the body and its ETag
    assert queries.running(same_tasks, query) is a
    assert (queries.cache.hits, queries.cache.misses) == (2, 1)
    changed = snap(3, [*tasks[:-1], make_view("c", "c1", "running", 99)], same_tasks)
    c = queries.running(changed, query)
    assert queries.cache.misses == 2
    assert c.etag != a.etag and bytes(c.body) == bytes(a.body)  # the page did not change, but the data it came from did


def test_one_task_by_id_from_the_snapshots_own_entries() -> None:
    queries = service()
    tasks = sample()
    first = snap(1, tasks)
    found = queries.task(first, "d", Projection())
    assert found is not None
    assert orjson.loads(bytes(found.body)) == {
        "code": 0,
        "message": "ok",
        "success": True,
        "data": orjson.loads(json_of(tasks[2])),
    }
    assert queries.task(first, "nope", Projection()) is None
    # another task changes: this one's answer, and its ETag, stay the same
    second = snap(2, [make_view("z"), *tasks], first)
    again = queries.task(second, "d", Projection())
    assert again is not None and again.etag == found.etag


def test_not_running_says_what_the_history_knows() -> None:
    queries = service()
    assert queries.not_running("x") == "task 'x' is not running"
    queries.history.record([departed("x", "failed", T0, T0 + 5000)])
    assert queries.not_running("x").startswith("task 'x' is not running: it left the running state as failed at ")


def test_finished_and_stats_follow_the_history_version() -> None:
    queries = service()
    first = snap(1, sample())
    query = parse_finished_query([])
    empty = queries.finished(query)
    stats = queries.stats(first)
    assert queries.finished(query) is empty and queries.stats(first) is stats
    queries.history.record([departed("x", "completed", T0, T0 + 5000)])
    filled = queries.finished(query)
    assert filled.etag != empty.etag
    assert orjson.loads(bytes(filled.body))["data"]["totalTasks"] == 1
    assert queries.stats(first).etag != stats.etag
    assert queries.stats(snap(2, sample(), first)).etag != queries.stats(first).etag  # windows move with time


def test_cache_can_be_turned_off() -> None:
    queries = service(query_cache_size=0)
    first = snap(1, sample())
    query = queries.parse_running(params("pageSize=1"))
    assert queries.running(first, query) is not queries.running(first, query)
    assert queries.cache_stats().entries == 0


def test_forget_drops_answers() -> None:
    queries = service()
    first = snap(1, sample())
    queries.running(first, queries.parse_running(params("pageSize=1")))
    queries.forget()
    assert queries.cache_stats().entries == 0 and queries.cache_stats().bytes == 0


def test_the_stream_snapshot_of_a_large_list_is_taken_as_it_is_sent() -> None:
    queries = service()
    tasks = [make_view(f"t{i:05d}", start=T0 - i, files=[entry(f"src/file{i}.go")] * 4) for i in range(5000)]
    large = snap(1, tasks)
    assert len(large.body) > 1024 * 1024  # past ONE_CHUNK_BYTES: segments joined when first sent
    assert not any(segment.joined for segment in large.segments)
    data = queries.stream_snapshot(large, queries.parse_running(params("")))
    first = next(data)
    assert first.startswith(b'{"generation":1,')
    assert not all(segment.joined for segment in large.segments)  # one chunk at a time
    sent = orjson.loads(first + b"".join(data))
    assert sent == {"generation": 1, **orjson.loads(bytes(large.body))["data"]}
    assert [task["taskId"] for task in sent["tasks"]] == [task.task_id for task in tasks]
