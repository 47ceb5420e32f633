"""The HTTP contract, in process, against fakeredis (fast); the failure cases on a real server are in
test_failures.py."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import fakeredis
import orjson
import pytest
import redis.exceptions

from service.http.app import create_app
from service.settings import settings_from_mapping
from tests.conftest import make_settings, running_app

RUNNING = "/codebase-embedder/api/v1/tasks/running"
STATS = "/codebase-embedder/api/v1/tasks/cache-stats"
pytestmark = pytest.mark.anyio


def producer_value(progress: int, process: str = "processing", files: int = 1, **extra: Any) -> bytes:
    entries = [{"path": f"src/f{i}.go", "status": "pending", "operate": "add"} for i in range(files)]
    return orjson.dumps({"process": process, "totalProgress": progress, "fileList": entries or None, **extra})


async def seed(client: fakeredis.FakeAsyncRedis) -> None:
    await client.set("request:id:old", producer_value(40, start="x", startTime="2026-11-28T01:00:00.000Z"), ex=3600)
    await client.set("request:id:new", producer_value(0, "pending", files=0, startTime="2026-11-28T02:00:00.000Z"))
    await client.set("request:id:done", producer_value(100, "completed"), ex=3600)
    await client.set("request:id:junk", b"{")


async def test_running_tasks_contract() -> None:
    client = fakeredis.FakeAsyncRedis()
    await seed(client)
    async with running_app(create_app(make_settings(), redis=client)) as http:
        response = await http.get(RUNNING)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["code", "message", "success", "data"]
    assert (body["code"], body["message"], body["success"]) == (0, "ok", True)
    assert list(body["data"]) == ["totalTasks", "tasks"]
    assert body["data"]["totalTasks"] == 2
    new, old = body["data"]["tasks"]  # newest start first
    assert (new["taskId"], old["taskId"]) == ("new", "old")
    assert new["status"] == new["process"] == "pending"
    assert new["fileList"] == []  # fileList null becomes []
    assert new["startTime"] == "2026-11-28T02:00:00.000Z"
    assert old["fileList"] == [{"path": "src/f0.go", "status": "pending", "operate": "add"}]
    assert "estimatedCompletionTime" not in old  # no observed rate yet
    assert set(old) == {
        "taskId",
        "clientId",
        "status",
        "process",
        "totalProgress",
        "startTime",
        "lastUpdateTime",
        "stalled",
        "fileList",
    }
    assert old["stalled"] is False


async def test_served_from_the_snapshot_until_the_next_refresh() -> None:
    client = fakeredis.FakeAsyncRedis()
    await seed(client)
    app = create_app(make_settings(refresh_interval=60), redis=client)
    async with running_app(app) as http:
        await client.set("request:id:later", producer_value(5), ex=3600)
        first = (await http.get(RUNNING)).json()
        assert first["data"]["totalTasks"] == 2  # the snapshot from startup
        await app.state.refresher.run_job()
        second = (await http.get(RUNNING)).json()
        assert second["data"]["totalTasks"] == 3
        stats = (await http.get(STATS)).json()["data"]
    assert stats["counters"]["servedFromSnapshot"] == 2
    assert stats["counters"]["servedByLiveScan"] == 0


async def test_stale_snapshot_is_replaced_by_a_live_scan() -> None:
    client = fakeredis.FakeAsyncRedis()
    await seed(client)
    app = create_app(make_settings(refresh_interval=60, cache_ttl=60), redis=client)
    async with running_app(app) as http:
        refresher = app.state.refresher
        await client.set("request:id:later", producer_value(5), ex=3600)
        refresher.snapshot = dataclasses.replace(refresher.snapshot, built_monotonic=-1000.0)  # 'built long ago'
        body = (await http.get(RUNNING)).json()
        assert body["data"]["totalTasks"] == 3
        assert app.state.endpoints.delivery.counters.served_by_live_scan == 1
        assert refresher.snapshot.is_fresh(60)  # the live scan's result is the new snapshot


async def test_cache_disabled_scans_on_every_request() -> None:
    client = fakeredis.FakeAsyncRedis()
    await seed(client)
    app = create_app(make_settings(cache_enabled=False), redis=client)
    async with running_app(app) as http:
        assert app.state.refresher.snapshot is None  # nothing built at startup, no job
        assert (await http.get(RUNNING)).json()["data"]["totalTasks"] == 2
        await client.set("request:id:later", producer_value(5), ex=3600)
        assert (await http.get(RUNNING)).json()["data"]["totalTasks"] == 3
        stats = (await http.get(STATS)).json()["data"]
    assert stats["cacheEnabled"] is False
    assert stats["job"]["running"] is False
    assert stats["counters"]["servedByLiveScan"] == 2


async def test_concurrent_requests_share_one_live_scan() -> None:
    class SlowScan(fakeredis.FakeAsyncRedis):
        scans = 0

        async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.05)
            reply = await super().evalsha(*args, **kwargs)  # a first NoScriptError (script not loaded) not counted
            SlowScan.scans += 1
            return reply

    client = SlowScan()
    await seed(client)
    app = create_app(make_settings(cache_enabled=False), redis=client)
    async with running_app(app) as http:
        responses = await asyncio.gather(*(http.get(RUNNING) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert SlowScan.scans == 1  # one SCAN call: the keyspace fits one page, and the scan was shared
    assert app.state.refresher.counters.refreshes_ok == 1
    feed = app.state.endpoints.follower.info()
    assert feed.state == "off" and "cache_enabled" in feed.reason  # no snapshot to follow


async def test_etag_and_not_modified() -> None:
    client = fakeredis.FakeAsyncRedis()
    await seed(client)
    app = create_app(make_settings(refresh_interval=60), redis=client)
    async with running_app(app) as http:
        first = await http.get(RUNNING)
        etag = first.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"')
        cached = await http.get(RUNNING, headers={"If-None-Match": f'"other", {etag}'})
        assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", etag)
        await app.state.refresher.run_job()  # nothing changed: same body, same tag
        assert (await http.get(RUNNING, headers={"If-None-Match": etag})).status_code == 304
        await client.set("request:id:later", producer_value(5), ex=3600)
        await app.state.refresher.run_job()
        changed = await http.get(RUNNING, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag


class Broken(fakeredis.FakeAsyncRedis):
    error: Exception = RuntimeError("boom: secret detail")

    async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (redis.exceptions.ConnectionError("Connection refused"), 503, "Redis服务不可用，请稍后再试"),
        (redis.exceptions.TimeoutError("Timeout reading"), 504, "查询超时，请稍后再试"),
        (RuntimeError("boom: secret detail"), 500, "查询任务状态时发生内部错误"),
    ],
)
async def test_errors_use_the_envelope(error: Exception, status: int, message: str) -> None:
    client = Broken()
    client.error = error
    async with running_app(create_app(make_settings(), redis=client)) as http:
        response = await http.get(RUNNING)
        stats = (await http.get(STATS)).json()["data"]
    assert response.status_code == status
    assert response.json() == {"code": status, "message": message, "success": False, "data": None}
    assert b"secret" not in response.content
    assert stats["lastRefresh"]["error"].endswith(str(error))  # the detail is for operators


async def test_scan_budget_exceeded_is_504() -> None:
    class Slow(fakeredis.FakeAsyncRedis):
        async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(1)
            return await super().evalsha(*args, **kwargs)

    async with running_app(create_app(make_settings(max_scan_time=50, cache_enabled=False), redis=Slow())) as http:
        response = await http.get(RUNNING)
        stats = (await http.get(STATS)).json()["data"]
    assert response.status_code == 504
    assert response.json()["message"] == "查询超时，请稍后再试"
    assert stats["counters"]["timeouts"] == 1
    assert "max_scan_time" in stats["lastRefresh"]["error"]


async def test_failures_are_not_retried_by_every_request() -> None:
    client = Broken()
    client.error = redis.exceptions.ConnectionError("refused")
    app = create_app(make_settings(cache_enabled=False), redis=client)
    async with running_app(app) as http:
        statuses = [(await http.get(RUNNING)).status_code for _ in range(10)]
    assert statuses == [503] * 10
    assert app.state.refresher.counters.refreshes_failed == 1  # the other nine got the held failure


async def test_methods_other_than_get_and_unknown_paths() -> None:
    async with running_app(create_app(make_settings(), redis=fakeredis.FakeAsyncRedis())) as http:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response = await http.request(method, RUNNING)
            assert response.status_code == 405
            assert response.json() == {"code": 405, "message": "Method Not Allowed", "success": False, "data": None}
        assert "GET" in response.headers["allow"]
        missing = await http.get("/codebase-embedder/api/v1/tasks/nope")
        assert (missing.status_code, missing.json()["code"], missing.json()["success"]) == (404, 404, False)
        head = await http.head(RUNNING)
        assert head.status_code == 200


async def test_cache_stats_reports_snapshot_refresh_counters_job_and_redacted_settings() -> None:
    client = fakeredis.FakeAsyncRedis()
    await seed(client)
    settings = settings_from_mapping({"redis": {"url": "redis://:hunter2@db:6380/1"}})
    app = create_app(settings, redis=client)
    async with running_app(app) as http:
        await http.get(RUNNING)
        response = await http.get(STATS)
    assert b"hunter2" not in response.content
    body = response.json()
    assert (body["code"], body["success"]) == (0, True)
    data = body["data"]
    assert data["cacheEnabled"] is True
    snapshot = data["snapshot"]
    assert snapshot["generation"] == app.state.refresher.first_generation + 1
    assert snapshot["taskCount"] == 2
    assert snapshot["stale"] is False
    assert snapshot["ttlSeconds"] == 60
    assert 0 <= snapshot["ageSeconds"] < 60
    assert snapshot["builtAt"].endswith("Z")
    last = data["lastRefresh"]
    assert last["error"] is None
    assert last["trigger"] == "startup"
    assert (last["keysScanned"], last["valuesFetched"], last["matched"], last["malformed"]) == (4, 4, 2, 1)
    assert {"startedAt", "durationMs", "pages", "expired"} <= set(last)
    assert data["counters"]["refreshesOk"] == 1
    assert data["counters"]["servedFromSnapshot"] == 1
    assert data["job"]["running"] is True
    assert data["job"]["intervalSeconds"] == 2
    assert data["job"]["nextRun"] is not None
    assert data["settings"]["redis"]["url"] == "redis://:***@db:6380/1"
    assert data["settings"]["running_tasks"]["scan_batch_size"] == 100


async def test_the_job_starts_and_stops_with_the_lifespan() -> None:
    client = fakeredis.FakeAsyncRedis()
    await seed(client)
    app = create_app(make_settings(refresh_interval=0.05), redis=client)
    refresher = app.state.refresher
    async with running_app(app):
        assert refresher.next_run() is not None
        await asyncio.sleep(0.5)
        assert refresher.counters.refreshes_ok >= 3  # startup, then the job's ticks
    assert refresher.next_run() is None
    refreshes = refresher.counters.refreshes_ok
    await asyncio.sleep(0.2)
    assert refresher.counters.refreshes_ok == refreshes  # nothing runs after shutdown


async def test_the_lifespan_protocol_passes_through_every_middleware() -> None:
    # what uvicorn does: a middleware that expected an HTTP scope would make it think lifespan is unsupported
    client = fakeredis.FakeAsyncRedis()
    await seed(client)
    app = create_app(make_settings(), redis=client)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            assert app.state.refresher.snapshot is not None  # the first snapshot is there before any request

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_health_and_readiness() -> None:
    client = fakeredis.FakeAsyncRedis()
    app = create_app(make_settings(), redis=client)
    async with running_app(app) as http:
        assert (await http.get("/healthz")).json()["data"] == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
        app.state.refresher.snapshot = dataclasses.replace(app.state.refresher.snapshot, built_monotonic=-1000.0)
        not_ready = await http.get("/readyz")
    assert (not_ready.status_code, not_ready.json()["success"]) == (503, False)


async def test_readiness_without_cache_is_a_ping() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server)
    async with running_app(create_app(make_settings(cache_enabled=False), redis=client)) as http:
        assert (await http.get("/readyz")).status_code == 200
        server.connected = False
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200  # the process still answers


# -- the refreshes' own loop (issue 15, item 5) --------------------------------------------------------------


@pytest.mark.real_redis
@pytest.mark.parametrize("threaded", [True, False])
async def test_refreshes_run_on_their_own_thread_unless_told_not_to(redis_url: str, threaded: bool) -> None:
    import threading

    import redis as sync_redis

    with sync_redis.Redis.from_url(redis_url) as client:
        client.set("request:id:a", producer_value(10), ex=3600)
    # the job's periodic scans are what this counts (with the change feed, the job scans every reconcile_interval)
    settings = make_settings(url=redis_url, refresh_interval=0.1, refresh_thread=threaded, change_feed="off")
    app = create_app(settings)
    threads: list[str] = []
    app.state.refresher.listeners.append(lambda record, failure: threads.append(threading.current_thread().name))
    async with running_app(app) as http:
        assert (await http.get(RUNNING)).json()["data"]["totalTasks"] == 1
        await asyncio.sleep(0.5)  # the job's ticks
        refresher = app.state.refresher
        await refresher.stop()  # no more ticks: the next refresh is the request's
        refresher.snapshot = dataclasses.replace(refresher.snapshot, built_monotonic=-1000.0)  # stale: a live scan
        live = await http.get(RUNNING)
        assert live.json()["data"]["totalTasks"] == 1
        assert live.headers["cache-control"] == "no-cache"
    assert len(threads) >= 3  # startup, the job, the live scan
    expected = {"refresh"} if threaded else {threading.main_thread().name}
    assert set(threads) == expected
    assert not any(thread.name == "refresh" for thread in threading.enumerate())  # stopped with the app
