"""The query API over HTTP: every parameter of the running list, one task by id, the finished list and the stats,
their errors, ETags and 304s; fakeredis for the contract, a real redis-server with simulated producer data for
an end-to-end check against the unfiltered read."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import fakeredis
import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from service.devtools.simulator import build_workload
from service.domain.times import format_time, parse_time
from service.http.app import create_app
from tests.conftest import make_settings, running_app
from tests.http.test_app import Broken

API = "/codebase-embedder/api/v1/tasks"
RUNNING = f"{API}/running"
pytestmark = pytest.mark.anyio

NOW = int(time.time() * 1000)
MINUTE = 60_000


def task_value(
    progress: int,
    process: str = "processing",
    client: str = "",
    start_ago_min: int = 1,
    update_ago_min: int = 0,
    files: int = 2,
) -> bytes:
    entries = [
        {"path": f"src/f{i}.go", "status": "completed" if i % 2 else "pending", "operate": "delete" if i % 3 else "add"}
        for i in range(files)
    ]
    value: dict[str, Any] = {
        "process": process,
        "totalProgress": progress,
        "fileList": entries or None,
        "startTime": format_time(NOW - start_ago_min * MINUTE),
        "lastUpdateTime": NOW - update_ago_min * MINUTE,  # epoch ms, as some newer producers write
    }
    if client:
        value["clientId"] = client
    return orjson.dumps(value)


SEED = {
    # id: (progress, status, client, started minutes ago, updated minutes ago, files)
    "t1": (10, "processing", "c1", 50, 1, 3),
    "t2": (60, "processing", "c2", 40, 10, 40),  # stalled: 10 min without a change
    "t3": (0, "pending", "c1", 30, 30, 0),  # stalled too
    "t4": (95, "processing", "c2", 20, 0, 5),
    "t5": (40, "running", "", 10, 2, 1),
}


async def seed(client: Any) -> None:
    for task_id, (progress, process, client_id, started, updated, files) in SEED.items():
        await client.set(f"request:id:{task_id}", task_value(progress, process, client_id, started, updated, files))
    await client.set("request:id:done", task_value(100, "completed", "c1"))


@pytest.fixture
async def redis_client() -> fakeredis.FakeAsyncRedis:
    client = fakeredis.FakeAsyncRedis()
    await seed(client)
    return client


@pytest.fixture
async def app(redis_client: fakeredis.FakeAsyncRedis) -> Starlette:
    return create_app(make_settings(refresh_interval=60), redis=redis_client)


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(app) as http:
        yield http


async def get(http: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    response = await http.get(path, params=params or None)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert (body["code"], body["message"], body["success"]) == (0, "ok", True)
    return body["data"]


async def ids(http: httpx.AsyncClient, query: str) -> list[str]:
    response = await http.get(f"{RUNNING}?{query}")
    assert response.status_code == 200, response.text
    return [t["taskId"] for t in response.json()["data"]["tasks"]]


async def test_without_parameters_the_answer_is_the_snapshots_own_body(http: httpx.AsyncClient) -> None:
    plain = await http.get(RUNNING)
    body = plain.json()["data"]
    assert [t["taskId"] for t in body["tasks"]] == ["t5", "t4", "t3", "t2", "t1"]  # newest start first
    assert {t["taskId"]: t["stalled"] for t in body["tasks"]} == {
        "t1": False,
        "t2": True,
        "t3": True,
        "t4": False,
        "t5": False,
    }
    for query in ("unknown=1", "sort=-startTime", "fileList=full", "page=&clientId="):
        same = await http.get(f"{RUNNING}?{query}")
        assert (same.content, same.headers["etag"]) == (plain.content, plain.headers["etag"]), query
    not_modified = await http.get(f"{RUNNING}?unknown=1", headers={"If-None-Match": plain.headers["etag"]})
    assert not_modified.status_code == 304


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("clientId=c1", ["t3", "t1"]),
        ("clientId=c1,c2", ["t4", "t3", "t2", "t1"]),
        ("clientId=c2&clientId=c1", ["t4", "t3", "t2", "t1"]),
        ("status=processing", ["t4", "t2", "t1"]),
        ("status=pending&status=running", ["t5", "t3"]),
        ("stalled=true", ["t3", "t2"]),
        ("stalled=false", ["t5", "t4", "t1"]),
        (f"startedAfter={format_time(NOW - 30 * MINUTE)}", ["t5", "t4", "t3"]),
        (f"startedBefore={NOW - 30 * MINUTE}", ["t2", "t1"]),
        (f"updatedAfter={NOW - 2 * MINUTE}", ["t5", "t4", "t1"]),
        (f"updatedBefore={format_time(NOW - 2 * MINUTE)}", ["t3", "t2"]),
        ("sort=startTime", ["t1", "t2", "t3", "t4", "t5"]),
        ("sort=-totalProgress", ["t4", "t2", "t5", "t1", "t3"]),
        ("sort=lastUpdateTime", ["t3", "t2", "t5", "t1", "t4"]),
        ("sort=-taskId", ["t5", "t4", "t3", "t2", "t1"]),
        ("clientId=c2&stalled=false&sort=taskId", ["t4"]),
    ],
)
async def test_filters_and_sorts(http: httpx.AsyncClient, query: str, expected: list[str]) -> None:
    assert await ids(http, query) == expected
    data = (await http.get(f"{RUNNING}?{query}")).json()["data"]
    assert data["totalTasks"] == len(expected)
    assert list(data) == ["totalTasks", "tasks"]  # no page fields without paging


@pytest.mark.parametrize(
    "query",
    ["", "clientId=c1,c2", "status=processing&sort=-totalProgress", "stalled=false&sort=taskId&fileList=none"],
)
async def test_pages_cover_the_matches_exactly_once(http: httpx.AsyncClient, query: str) -> None:
    everything = await ids(http, query or "sort=-startTime")
    seen: list[str] = []
    for page in range(1, 5):
        data = await get(http, f"{RUNNING}?{query}&page={page}&pageSize=2")
        assert (data["totalTasks"], data["page"], data["pageSize"]) == (len(everything), page, 2)
        assert data["totalPages"] == (len(everything) + 1) // 2
        assert list(data) == ["totalTasks", "page", "pageSize", "totalPages", "tasks"]
        seen += [t["taskId"] for t in data["tasks"]]
    assert seen == everything


async def test_projections(http: httpx.AsyncClient) -> None:
    full = (await http.get(f"{RUNNING}?pageSize=50")).json()["data"]["tasks"]
    lean = (await http.get(f"{RUNNING}?pageSize=50&fileList=none")).json()["data"]["tasks"]
    assert lean == [{k: v for k, v in t.items() if k != "fileList"} for t in full]
    summary = (await http.get(f"{RUNNING}?clientId=c2&fileList=summary&sort=taskId")).json()["data"]["tasks"]
    t2 = summary[0]["fileSummary"]
    assert (t2["total"], t2["byStatus"]["completed"], t2["byStatus"]["pending"]) == (40, 20, 20)
    assert sum(t2["byOperate"].values()) == 40 and "fileList" not in summary[0]
    picked = (await http.get(f"{RUNNING}?fields=taskId,totalProgress&sort=-totalProgress&pageSize=2")).json()
    assert picked["data"]["tasks"] == [{"taskId": "t4", "totalProgress": 95}, {"taskId": "t2", "totalProgress": 60}]
    with_files = (await http.get(f"{RUNNING}?fields=taskId,fileList&clientId=c1&sort=taskId")).json()["data"]
    assert [sorted(t) for t in with_files["tasks"]] == [["fileList", "taskId"]] * 2
    assert with_files["tasks"][0]["fileList"] == next(t["fileList"] for t in full if t["taskId"] == "t1")


@pytest.mark.parametrize(
    ("path", "query", "parameter"),
    [
        (RUNNING, "clientId=c1&status=complete", "status"),
        (RUNNING, "startedAfter=yesterday", "startedAfter"),
        (RUNNING, "startedBefore=2026-02-30T00:00:00Z", "startedBefore"),
        (RUNNING, "updatedAfter=soon", "updatedAfter"),
        (RUNNING, "updatedAfter=2000&updatedBefore=1000", "updatedBefore"),
        (RUNNING, "stalled=maybe", "stalled"),
        (RUNNING, "sort=size", "sort"),
        (RUNNING, "page=0&pageSize=10", "page"),
        (RUNNING, "pageSize=5000", "pageSize"),
        (RUNNING, "fields=taskId,owner", "fields"),
        (RUNNING, "fileList=some", "fileList"),
        (f"{RUNNING}/t1", "fileList=all", "fileList"),
        (f"{RUNNING}/t1", "fields=nope", "fields"),
        (f"{API}/finished", "status=processing", "status"),
        (f"{API}/finished", "pageSize=0", "pageSize"),
        (f"{API}/finished", "endedBefore=tomorrow", "endedBefore"),
        (f"{API}/finished", "sort=totalProgress", "sort"),
        # once 500s: digits that str.isdigit() admits but int() refuses, and more digits than int() reads
        (RUNNING, "page=%C2%B2", "page"),
        (RUNNING, "startedAfter=%C2%B2", "startedAfter"),
        (RUNNING, "pageSize=" + "9" * 5000, "pageSize"),
        (RUNNING, "updatedAfter=" + "9" * 5000, "updatedAfter"),
        (f"{API}/finished", "page=%C2%B3", "page"),
        (f"{API}/finished", "endedAfter=" + "9" * 5000, "endedAfter"),
    ],
)
async def test_bad_values_get_a_400_envelope_naming_the_parameter(
    http: httpx.AsyncClient, path: str, query: str, parameter: str
) -> None:
    response = await http.get(f"{path}?{query}")
    assert response.status_code == 400
    body = response.json()
    assert list(body) == ["code", "message", "success", "data"]
    assert (body["code"], body["success"]) == (400, False)
    assert body["message"].startswith(f"请求参数错误: {parameter}: ")
    assert "expected" in body["message"]
    assert body["data"]["parameter"] == parameter
    assert body["data"]["accepted"]


async def test_filtered_answers_have_their_own_etag_and_304(
    http: httpx.AsyncClient, app: Starlette, redis_client: fakeredis.FakeAsyncRedis
) -> None:
    app_refresher = app.state.refresher
    plain = await http.get(RUNNING)
    first = await http.get(f"{RUNNING}?status=processing&pageSize=2")
    etag = first.headers["etag"]
    assert etag != plain.headers["etag"]
    assert first.headers["x-snapshot-generation"] == str(app_refresher.first_generation + 1)
    again = await http.get(f"{RUNNING}?pageSize=2&status=processing", headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    await app_refresher.run_job()  # nothing changed: same answer, same tag
    assert (
        await http.get(f"{RUNNING}?status=processing&pageSize=2", headers={"If-None-Match": etag})
    ).status_code == 304
    await redis_client.set("request:id:t9", task_value(1, start_ago_min=0))
    await app_refresher.run_job()
    changed = await http.get(f"{RUNNING}?status=processing&pageSize=2", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()["data"]["totalTasks"] == 4


async def test_derived_answers_compare_tags_and_cache_like_the_unfiltered_read(http: httpx.AsyncClient) -> None:
    plain = await http.get(RUNNING)
    first = await http.get(f"{RUNNING}?status=processing&pageSize=2")
    etag = first.headers["etag"]
    # the same Cache-Control as the snapshot's own body: fresh until the next refresh is due
    assert first.headers["cache-control"] == plain.headers["cache-control"]
    assert first.headers["cache-control"].startswith("max-age=")
    for header in (f"W/{etag}", f'"other", {etag}', "*"):  # weak comparison, lists and `*`, as RFC 9110 says
        again = await http.get(f"{RUNNING}?status=processing&pageSize=2", headers={"If-None-Match": header})
        assert again.status_code == 304, header
    other = await http.get(f"{RUNNING}?status=processing&pageSize=2", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200


async def test_the_query_cache_answers_repeats(http: httpx.AsyncClient) -> None:
    stats_path = f"{API}/cache-stats"
    before = (await get(http, stats_path))["queryCache"]
    for _ in range(3):
        await http.get(f"{RUNNING}?fileList=none&pageSize=50")
    after = (await get(http, stats_path))["queryCache"]
    assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (1, 2)
    assert after["entries"] >= 1 and after["maxEntries"] == 256
    assert after["history"]["size"] == 10_000


async def test_one_running_task_by_id(
    http: httpx.AsyncClient, app: Starlette, redis_client: fakeredis.FakeAsyncRedis
) -> None:
    listed = {t["taskId"]: t for t in (await get(http, RUNNING))["tasks"]}
    response = await http.get(f"{RUNNING}/t2")
    assert response.status_code == 200
    assert response.json() == {"code": 0, "message": "ok", "success": True, "data": listed["t2"]}
    assert len(response.json()["data"]["fileList"]) == 40
    lean = await get(http, f"{RUNNING}/t2", fileList="summary", fields="taskId,stalled")
    assert lean == {"taskId": "t2", "stalled": True, "fileSummary": lean["fileSummary"]}
    etag = response.headers["etag"]
    assert (await http.get(f"{RUNNING}/t2", headers={"If-None-Match": etag})).status_code == 304
    # another task changes: this one's tag does not
    await redis_client.set("request:id:t1", task_value(20, client="c1", start_ago_min=50))
    await app.state.refresher.run_job()
    assert (await http.get(f"{RUNNING}/t2", headers={"If-None-Match": etag})).status_code == 304


async def test_a_task_that_is_not_running_is_a_404_envelope(http: httpx.AsyncClient) -> None:
    # never seen, finished before we started, the empty id, and a running task's id with a line break after it
    # (Starlette's `path` convertor once stopped at the break and answered with task t1)
    for task_id in ("nope", "done", "", "t1\n", "t1\r\n"):
        response = await http.get(f"{RUNNING}/{quote(task_id)}")
        assert response.status_code == 404
        body = response.json()
        assert (body["code"], body["success"], body["data"]) == (404, False, None)
        assert body["message"] == f"task {task_id!r} is not running"


async def test_any_task_id_is_served(
    http: httpx.AsyncClient, app: Starlette, redis_client: fakeredis.FakeAsyncRedis
) -> None:
    # keys are binary-safe: a task id may hold `/`, line breaks (once a generic "Not Found") or anything else
    odd = ["a/b", "line\nbreak", "trailing\n", "sp ace", "\u00fcn\u00efc\u00f8de", "%41"]
    for task_id in odd:
        await redis_client.set(f"request:id:{task_id}", task_value(5))
    await app.state.refresher.run_job()
    for task_id in odd:
        data = await get(http, f"{RUNNING}/{quote(task_id, safe='/')}", fields="taskId,totalProgress")
        assert data == {"taskId": task_id, "totalProgress": 5}


async def test_finished_tasks_and_stats(
    http: httpx.AsyncClient, app: Starlette, redis_client: fakeredis.FakeAsyncRedis
) -> None:
    refresher = app.state.refresher
    client = redis_client
    empty = await get(http, f"{API}/finished")
    assert (empty["totalTasks"], empty["tasks"], empty["page"], empty["pageSize"]) == (0, [], 1, 100)
    await client.set("request:id:t1", task_value(100, "completed", "c1", start_ago_min=50, update_ago_min=0))
    await client.set("request:id:t2", task_value(60, "failed", "c2", start_ago_min=40, update_ago_min=1))
    await client.delete("request:id:t3")
    await refresher.run_job()
    finished = await get(http, f"{API}/finished")
    # newest end first: t3 was last seen just now, t1 ended at NOW, t2 a minute before
    assert [(t["taskId"], t["outcome"]) for t in finished["tasks"]] == [
        ("t3", "vanished"),
        ("t1", "completed"),
        ("t2", "failed"),
    ]
    t1 = finished["tasks"][1]
    assert t1["durationMs"] == parse_time(t1["endTime"]) - parse_time(t1["startTime"])  # type: ignore[operator]
    assert t1["durationMs"] == 50 * MINUTE  # the producer's own start and end times
    assert (t1["status"], t1["totalProgress"], t1["clientId"]) == ("completed", 100, "c1")
    failed_or_gone = await get(http, f"{API}/finished", status="failed,vanished")
    assert [t["taskId"] for t in failed_or_gone["tasks"]] == ["t3", "t2"]
    by_client = await get(http, f"{API}/finished", clientId="c1", pageSize=1, page=2)
    assert ([t["taskId"] for t in by_client["tasks"]], by_client["totalTasks"], by_client["totalPages"]) == (
        ["t1"],
        2,
        2,
    )

    stats_response = await http.get(f"{API}/stats")
    stats = stats_response.json()["data"]
    assert stats["running"]["total"] == 2 and stats["running"]["byStatus"]["processing"] == 1
    assert stats["running"]["stalled"] == 0
    assert stats["finished"]["byOutcome"] == {"completed": 1, "failed": 1, "vanished": 1, "other": 0}
    assert stats["finished"]["durationSeconds"]["all"]["count"] == 3
    assert stats["finished"]["throughput"]["last5m"]["finished"] == 3
    assert stats["finished"]["throughput"]["last5m"]["perMinute"] == 0.6
    etag = stats_response.headers["etag"]
    assert (await http.get(f"{API}/stats", headers={"If-None-Match": etag})).status_code == 304
    finished_etag = (await http.get(f"{API}/finished")).headers["etag"]
    assert (await http.get(f"{API}/finished", headers={"If-None-Match": finished_etag})).status_code == 304


@pytest.mark.parametrize("path", [f"{RUNNING}?pageSize=5", f"{RUNNING}/t1", f"{API}/finished", f"{API}/stats"])
async def test_new_endpoints_share_the_errors(path: str) -> None:
    client = Broken()
    client.error = ConnectionError("refused")
    async with running_app(create_app(make_settings(), redis=client)) as http:
        response = await http.get(path)
        assert response.status_code == 503
        assert response.json() == {
            "code": 503,
            "message": "Redis服务不可用，请稍后再试",
            "success": False,
            "data": None,
        }
        assert (await http.post(path)).status_code == 405


async def test_with_the_cache_disabled_every_query_sees_a_live_scan() -> None:
    client = fakeredis.FakeAsyncRedis()
    await seed(client)
    async with running_app(create_app(make_settings(cache_enabled=False), redis=client)) as http:
        assert await ids(http, "clientId=c1") == ["t3", "t1"]
        await client.set("request:id:t1", task_value(100, "completed", "c1"))
        assert await ids(http, "clientId=c1") == ["t3"]
        finished = await get(http, f"{API}/finished")
        assert [t["taskId"] for t in finished["tasks"]] == ["t1"]


# -- end to end on a real redis-server with the producer simulator -------------------------------------------


def reference(tasks: list[dict[str, Any]], *, client_ids: set[str] | None = None, **kw: Any) -> list[dict[str, Any]]:
    """What a query should return, computed from the unfiltered answer by a different route than the service."""
    out = [t for t in tasks if client_ids is None or t["clientId"] in client_ids]
    if "statuses" in kw:
        out = [t for t in out if t["status"] in kw["statuses"]]
    if "updated_after" in kw:
        out = [t for t in out if parse_time(t["lastUpdateTime"]) >= kw["updated_after"]]  # type: ignore[operator]
    if "key" in kw:
        out = sorted(out, key=kw["key"], reverse=kw.get("reverse", False))
    return out


@pytest.mark.real_redis
async def test_queries_agree_with_the_unfiltered_read_on_simulated_data(redis_url: str) -> None:
    async with aioredis.Redis.from_url(redis_url) as client:
        summary = await build_workload(client, tasks=600, unrelated=200, newer_producer_fraction=0.5, now_ms=NOW)
        app = create_app(make_settings(url=redis_url, refresh_interval=60))
        async with running_app(app) as http:
            everything = (await get(http, RUNNING))["tasks"]
            assert len(everything) == summary.running_total
            clients = sorted({t["clientId"] for t in everything if t["clientId"]})
            assert len(clients) >= 3
            cases: list[tuple[str, list[dict[str, Any]]]] = [
                (f"clientId={clients[0]},{clients[1]}", reference(everything, client_ids=set(clients[:2]))),
                ("status=pending", reference(everything, statuses={"pending"})),
                (
                    "sort=-totalProgress",
                    reference(everything, key=lambda t: t["totalProgress"], reverse=True),
                ),
                (
                    f"updatedAfter={NOW - 5_000}&sort=taskId",
                    reference(everything, updated_after=NOW - 5_000, key=lambda t: t["taskId"]),
                ),
            ]
            for query, expected in cases:
                got: list[dict[str, Any]] = []
                page = 1
                while True:
                    data = await get(http, f"{RUNNING}?{query}&page={page}&pageSize=37")
                    assert data["totalTasks"] == len(expected), query
                    got += data["tasks"]
                    if page >= data["totalPages"]:
                        break
                    page += 1
                assert got == expected, query
            lean = await http.get(f"{RUNNING}?fileList=none&pageSize=50")
            assert len(lean.content) < 60_000
            assert [t["taskId"] for t in lean.json()["data"]["tasks"]] == [t["taskId"] for t in everything[:50]]
            one = everything[17]
            assert await get(http, f"{RUNNING}/{one['taskId']}") == one
