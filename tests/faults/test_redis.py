"""Failure behaviour against a real redis-server that the tests kill, pause and restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.devtools.embedded import RedisServerProcess, free_port
from service.http.app import create_app
from tests.conftest import first_answer, make_settings, running_app

RUNNING = "/codebase-embedder/api/v1/tasks/running"
STATS = "/codebase-embedder/api/v1/tasks/cache-stats"
pytestmark = [pytest.mark.anyio, pytest.mark.real_redis]

VALUE = b'{"process":"processing","totalProgress":10,"fileList":null}'


def seed(url: str, count: int = 3) -> None:
    with redis.Redis.from_url(url) as client:
        for i in range(count):
            client.set(f"request:id:t{i}", VALUE, ex=3600)


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_redis_down_at_startup_then_back(own_redis_server: RedisServerProcess) -> None:
    own_redis_server.stop()
    settings = make_settings(url=own_redis_server.url, refresh_interval=0.2, redis_timeout=500)
    app = create_app(settings)
    async with running_app(app) as http:
        down = await http.get(RUNNING)
        assert down.status_code == 503
        assert down.json() == {"code": 503, "message": "Redis服务不可用，请稍后再试", "success": False, "data": None}
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200

        own_redis_server.start()
        seed(own_redis_server.url)

        async def recovered() -> bool:
            response = await http.get(RUNNING)
            return response.status_code == 200 and response.json()["data"]["totalTasks"] == 3

        await wait_for(recovered)  # no restart: the job retried on its own
        assert (await http.get("/readyz")).status_code == 200
        counters = (await http.get(STATS)).json()["data"]["counters"]
    assert counters["redisUnavailable"] >= 1
    assert counters["refreshesOk"] >= 1


async def test_redis_dying_keeps_the_last_snapshot_until_it_is_stale(own_redis_server: RedisServerProcess) -> None:
    seed(own_redis_server.url)
    settings = make_settings(url=own_redis_server.url, refresh_interval=0.1, cache_ttl=1, redis_timeout=300)
    app = create_app(settings)
    async with running_app(app) as http:
        good = await http.get(RUNNING)
        assert good.json()["data"]["totalTasks"] == 3
        own_redis_server.kill()

        async def failures_counted() -> bool:
            stats = (await http.get(STATS)).json()["data"]
            return bool(stats["counters"]["refreshesFailed"] >= 2)

        await wait_for(failures_counted)
        # still inside the TTL of the last good snapshot: served as it was
        snapshot = app.state.refresher.snapshot
        if snapshot.is_fresh(1):
            still = await http.get(RUNNING)
            assert (still.status_code, still.content) == (200, good.content)

        async def stale() -> bool:
            return (await http.get(RUNNING)).status_code == 503

        await wait_for(stale)
        stats = (await http.get(STATS)).json()["data"]
        assert stats["snapshot"]["stale"] is True
        assert stats["snapshot"]["generation"] == snapshot.generation  # kept, not replaced by a failure
        assert stats["lastRefresh"]["error"]
        assert stats["job"]["running"] is True  # the job goes on

        own_redis_server.start()
        seed(own_redis_server.url, count=2)

        async def back() -> bool:
            response = await http.get(RUNNING)
            return response.status_code == 200 and response.json()["data"]["totalTasks"] == 2

        await wait_for(back)


async def test_a_hung_redis_cannot_pile_up_refreshes(own_redis_server: RedisServerProcess) -> None:
    seed(own_redis_server.url)
    settings = make_settings(  # the periodic scans' behaviour (the feed's: tests/snapshot/test_follower.py)
        url=own_redis_server.url,
        refresh_interval=0.05,
        cache_ttl=1,
        redis_timeout=1500,
        max_scan_time=1000,
        change_feed="off",
    )
    app = create_app(settings)
    refresher = app.state.refresher
    scanner = refresher._scanner
    active = peak = 0
    real_scan = scanner.scan

    async def counting_scan(sink: Any, pause: Any = None) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            return await real_scan(sink, pause)
        finally:
            active -= 1

    scanner.scan = counting_scan
    async with running_app(app) as http:
        own_redis_server.pause()
        try:
            started = time.monotonic()
            # many ticks of the job and many requests while Redis does not answer
            responses = await asyncio.gather(*(http.get(RUNNING) for _ in range(20)))
            await asyncio.sleep(1.5)
        finally:
            own_redis_server.resume()
        assert peak == 1
        assert time.monotonic() - started < 10
        assert {r.status_code for r in responses} <= {200, 504}
        stats = (await http.get(STATS)).json()["data"]
        assert stats["counters"]["timeouts"] >= 1
        assert stats["counters"]["jobRunsSkipped"] >= 1  # ticks that found a refresh running were skipped


async def test_hung_redis_answers_504_not_a_hang(own_redis_server: RedisServerProcess) -> None:
    seed(own_redis_server.url)
    settings = make_settings(url=own_redis_server.url, cache_enabled=False, redis_timeout=300, max_scan_time=2000)
    async with running_app(create_app(settings)) as http:
        own_redis_server.pause()
        try:
            started = time.monotonic()
            response = await http.get(RUNNING)
            elapsed = time.monotonic() - started
        finally:
            own_redis_server.resume()
    assert response.status_code == 504
    assert elapsed < 2.5


async def test_wrong_types_and_bad_values_never_break_a_refresh(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("request:id:ok", VALUE, ex=3600)
        client.hset("request:id:h", "process", "processing")
        client.rpush("request:id:l", "a")
        client.sadd("request:id:s", "a")
        client.zadd("request:id:z", {"a": 1})
        client.xadd("request:id:x", {"a": "1"})
        client.set("request:id:bin", b"\x80\x81")
        client.set("request:id:", b'{"process":"pending"}')
    async with running_app(create_app(make_settings(url=redis_url))) as http:
        body = (await http.get(RUNNING)).json()
        stats = (await http.get(STATS)).json()["data"]["lastRefresh"]
    assert [t["taskId"] for t in body["data"]["tasks"]] == ["ok"]
    assert (stats["malformed"], stats["wrongType"], stats["emptyId"]) == (6, 5, 1)


def test_procfile_command_serves_and_bad_settings_stop_startup(redis_url: str) -> None:
    seed(redis_url)
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PORT": str(port)}
    root = Path(__file__).resolve().parents[2]
    procfile = (root / "Procfile").read_text().split(":", 1)[1].strip()
    command = procfile.replace("python", sys.executable, 1).replace("0.0.0.0", "127.0.0.1")
    server = subprocess.Popen(
        ["bash", "-c", command], cwd=root, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        response = first_answer(server, f"http://127.0.0.1:{port}{RUNNING}", timeout=15)
        assert response.status_code == 200
        assert response.json()["data"]["totalTasks"] == 3
    finally:
        server.terminate()
        server.wait(timeout=10)

    bad = subprocess.run(
        ["bash", "-c", command],
        cwd=root,
        env={**env, "SERVICE__RUNNING_TASKS__SCAN_BATCH_SIZE": "0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: invalid settings: running_tasks.scan_batch_size = '0': must be >= 1"
    )


# -- connections the server closed (issue 15, item 2) -----------------------------------------------------------


async def _refresh_after(event: Callable[[], None], server: RedisServerProcess, workers: int = 10) -> float:
    """Seed, refresh once (the pool now holds idle connections), run `event`, seed again; then the very next
    refresh must succeed. Returns how long it took."""
    seed(server.url)
    app = create_app(make_settings(url=server.url, refresh_interval=60, worker_count=workers))
    async with running_app(app):
        refresher = app.state.refresher
        await refresher.refresh("job")
        event()
        seed(server.url, count=5)
        started = time.monotonic()
        snapshot = await refresher.refresh("job")  # raises RefreshFailed if it does not succeed
        took = time.monotonic() - started
        assert len(snapshot.tasks) == 5
        assert refresher.counters.refreshes_failed == 0
    return took


async def test_the_first_refresh_after_a_redis_restart_succeeds(own_redis_server: RedisServerProcess) -> None:
    def restart() -> None:
        own_redis_server.stop()
        own_redis_server.start()

    assert await _refresh_after(restart, own_redis_server) < 2.0


async def test_the_first_refresh_after_the_server_killed_our_connections_succeeds(
    own_redis_server: RedisServerProcess,
) -> None:
    def kill_clients() -> None:
        with redis.Redis.from_url(own_redis_server.url) as admin:
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    assert await _refresh_after(kill_clients, own_redis_server) < 2.0


async def test_the_first_refresh_after_idle_connections_timed_out_succeeds(
    own_redis_server: RedisServerProcess,
) -> None:
    # the server closes clients idle for 1 s (redis.conf `timeout`), as a proxy or maxclients policy may
    def idle_out() -> None:
        with redis.Redis.from_url(own_redis_server.url) as admin:
            admin.config_set("timeout", 1)
        time.sleep(2.5)  # the server's cron closes them within a second or two of the limit

    assert await _refresh_after(idle_out, own_redis_server) < 2.0


async def test_rediss_to_a_plain_port_is_an_unreachable_redis_that_says_tls(redis_url: str) -> None:
    # a TLS client at a plain port: the handshake never completes; the answer is 503, and cache-stats says why
    tls_url = redis_url.replace("redis://", "rediss://", 1) + "?ssl_cert_reqs=none"
    app = create_app(make_settings(url=tls_url, redis_timeout=500, refresh_interval=60))
    async with running_app(app) as http:
        response = await http.get(RUNNING)
        error = (await http.get(STATS)).json()["data"]["lastRefresh"]["error"]
    assert response.status_code == 503
    assert "TLS handshake" in error and "rediss://" in error


# -- the keyspace changing under a scan; auth and maxclients (issue 15: the fault suite) ------------------------


def seed_many(url: str, count: int) -> None:
    with redis.Redis.from_url(url) as client, client.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.set(f"request:id:m{i}", VALUE, ex=3600)
        pipe.execute()


async def _during_a_scan(app: Any, event: Callable[[], None]) -> list[int]:
    """Run `event` once the next refresh has read its first page; meanwhile poll the running list. Returns the
    statuses the polls got; the refresh must end as a refresh does (a snapshot, or RefreshFailed), never worse."""
    from service.snapshot.refresher import RefreshFailed

    refresher = app.state.refresher
    scanner = refresher.scanner
    statuses: list[int] = []
    refresh = asyncio.ensure_future(refresher.refresh("job"))
    while scanner.current is None or scanner.current.pages < 1:
        await asyncio.sleep(0.001)
    await asyncio.to_thread(event)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as http:
        while not refresh.done():
            statuses.append((await http.get(RUNNING)).status_code)
            await asyncio.sleep(0.005)
    try:
        await refresh
    except RefreshFailed:
        pass
    return statuses


async def test_a_flushall_mid_scan_loses_nothing_that_is_still_there(own_redis_server: RedisServerProcess) -> None:
    seed_many(own_redis_server.url, 20_000)
    app = create_app(make_settings(url=own_redis_server.url, refresh_interval=60, scan_batch_size=50))
    async with running_app(app) as http:

        def flush() -> None:
            with redis.Redis.from_url(own_redis_server.url) as admin:
                admin.flushall()
                admin.set("request:id:after", VALUE, ex=3600)

        statuses = await _during_a_scan(app, flush)
        await app.state.refresher.refresh("job")
        body = (await http.get(RUNNING)).json()
        vanished = (await http.get(f"{RUNNING[: -len('running')]}stats")).json()["data"]["finished"]["byOutcome"]
    assert set(statuses) <= {200}  # the last snapshot served meanwhile
    assert [task["taskId"] for task in body["data"]["tasks"]] == ["after"]
    assert vanished["vanished"] == 20_000  # every task the flush removed, recorded as vanished


async def test_a_redis_replaced_mid_scan_is_followed(own_redis_server: RedisServerProcess) -> None:
    seed_many(own_redis_server.url, 20_000)
    app = create_app(make_settings(url=own_redis_server.url, refresh_interval=60, scan_batch_size=50))
    async with running_app(app) as http:

        def replace() -> None:
            own_redis_server.stop()  # another, empty server on the same address
            own_redis_server.start()
            seed(own_redis_server.url, count=2)

        statuses = await _during_a_scan(app, replace)
        await app.state.refresher.refresh("job")
        body = (await http.get(RUNNING)).json()
    assert set(statuses) <= {200}
    assert sorted(task["taskId"] for task in body["data"]["tasks"]) == ["t0", "t1"]


async def test_auth_turned_on_is_a_503_and_turned_off_recovers(own_redis_server: RedisServerProcess) -> None:
    seed(own_redis_server.url)
    app = create_app(make_settings(url=own_redis_server.url, refresh_interval=0.2, cache_ttl=1))
    async with running_app(app) as http:
        with redis.Redis.from_url(own_redis_server.url) as admin:
            admin.config_set("requirepass", "now-a-password-0123")
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

        async def refused() -> bool:
            return (await http.get(RUNNING)).status_code == 503

        await wait_for(refused)
        stats = (await http.get(STATS)).json()["data"]
        assert "now-a-password" not in str(stats)
        with redis.Redis.from_url(own_redis_server.url, password="now-a-password-0123") as admin:
            admin.config_set("requirepass", "")

        async def served() -> bool:
            return (await http.get(RUNNING)).status_code == 200

        await wait_for(served)
    assert stats["counters"]["redisUnavailable"] >= 1


async def test_maxclients_reached_is_a_503_and_recovers(own_redis_server: RedisServerProcess) -> None:
    seed(own_redis_server.url)
    app = create_app(make_settings(url=own_redis_server.url, refresh_interval=0.2, cache_ttl=1))
    async with running_app(app) as http:
        with redis.Redis.from_url(own_redis_server.url) as admin:
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # ours included
            admin.config_set("maxclients", 1)  # this admin connection is the one

            async def refused() -> bool:
                return (await http.get(RUNNING)).status_code == 503

            await wait_for(refused)
            admin.config_set("maxclients", 10_000)

        async def served() -> bool:
            return (await http.get(RUNNING)).status_code == 200

        await wait_for(served)
