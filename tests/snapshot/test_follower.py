"""The change feed against a real redis-server: every operation the producer and operators use is followed
within a batch, without a full scan; the feed's connection killed and the server restarted (reconnect, a full
scan, nothing missed); 10,000 writes in a burst; FLUSHALL, SWAPDB, expiry and eviction; the fallback when Redis
refuses CLIENT (renamed away, or denied to an ACL user); `change_feed = "off"`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.devtools.embedded import RedisServerProcess
from service.http.app import create_app
from service.source import change_feed
from tests.conftest import make_settings, running_app
from tests.faults.test_values import HOSTILE

pytestmark = [pytest.mark.real_redis, pytest.mark.anyio]

API = "/codebase-embedder/api/v1/tasks"
WAIT = 5.0  # s: far beyond a batch (20 ms); a full scan every reconcile_interval (60 s) would not come in time


def value(progress: int, process: str = "processing") -> bytes:
    return orjson.dumps({"process": process, "totalProgress": progress, "fileList": None})


@asynccontextmanager
async def following(url: str, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, aioredis.Redis]]:
    """The app over `url` (its own client and refresh thread, as in production) and a producer's client."""
    settings.setdefault("change_feed", "on")  # whatever TEST_CHANGE_FEED says: these tests are the feed's
    app = create_app(make_settings(url=url, refresh_interval=0.5, **settings))
    # the producer reconnects after a restart, as the embedder does
    producer = aioredis.Redis.from_url(
        url, retry=Retry(NoBackoff(), 3), retry_on_error=[redis.exceptions.ConnectionError]
    )
    try:
        async with running_app(app) as http:
            yield http, producer
    finally:
        await producer.aclose()


async def feed(http: httpx.AsyncClient) -> dict[str, Any]:
    stats = (await http.get(f"{API}/cache-stats")).json()["data"]
    info: dict[str, Any] = stats["changeFeed"]
    info["fullScans"] = stats["counters"]["refreshesOk"]
    return info


async def running(http: httpx.AsyncClient) -> dict[str, int]:
    tasks = (await http.get(f"{API}/running")).json()["data"]["tasks"]
    return {task["taskId"]: task["totalProgress"] for task in tasks}


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


async def shows(http: httpx.AsyncClient, expected: dict[str, int], what: str, timeout: float = WAIT) -> None:
    async def check() -> bool:
        answer = await http.get(f"{API}/running")
        if answer.status_code != 200:  # a refresh failed a moment ago (Redis hung, stopped): not yet
            return False
        tasks = answer.json()["data"]["tasks"]
        return {task["taskId"]: task["totalProgress"] for task in tasks} == expected

    await eventually(check, f"{what}: {expected}", timeout)


async def finished(http: httpx.AsyncClient) -> dict[str, str]:
    tasks = (await http.get(f"{API}/finished")).json()["data"]["tasks"]
    return {task["taskId"]: task["outcome"] for task in tasks}


async def test_every_operation_is_followed_without_a_full_scan(redis_url: str) -> None:
    async with following(redis_url) as (http, producer):
        assert (await feed(http))["state"] == "live"
        scans = (await feed(http))["fullScans"]
        await producer.set("request:id:a", value(10), ex=3600)
        await shows(http, {"a": 10}, "SET EX of a new task")
        await producer.set("request:id:a", value(20), keepttl=True)
        await shows(http, {"a": 20}, "SET KEEPTTL")
        await producer.expire("request:id:a", 1800)
        await producer.set("request:id:b", value(5), ex=3600)
        await shows(http, {"a": 20, "b": 5}, "EXPIRE, then another task")
        await producer.delete("request:id:a")
        await shows(http, {"b": 5}, "DEL")
        assert (await finished(http))["a"] == "vanished"
        await producer.set("request:id:c", value(1), ex=3600)
        await producer.unlink("request:id:b")
        await shows(http, {"c": 1}, "UNLINK")
        await producer.rename("request:id:c", "request:id:d")
        await shows(http, {"d": 1}, "RENAME")
        await producer.set("request:id:d", value(100, "completed"), ex=3600)
        await shows(http, {}, "a finished status")
        assert (await finished(http))["d"] == "completed"
        await producer.set("request:id:e", value(7), px=300)
        await shows(http, {"e": 7}, "SET PX")
        await shows(http, {}, "the key's expiry")
        await producer.set("unrelated:key", b"x")
        info = await feed(http)
        assert info["fullScans"] == scans, "a full scan ran: the feed did not carry these changes"
        assert info["batches"] > 0 and info["rescans"] == 0 and info["missed"] == 0
        metrics = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families((await http.get("/metrics")).text)
            for sample in family.samples
        }
        assert metrics[("running_tasks_change_feed_state", (("state", "live"),))] == 1
        assert metrics[("running_tasks_change_feed_batches_total", ())] == info["batches"]
        assert metrics[("running_tasks_change_feed_latency_seconds_count", ())] >= 8
        assert metrics[("running_tasks_change_feed_missed_total", ())] == 0


async def test_flushes_and_swapdb_rescan(redis_url: str) -> None:
    async with following(redis_url) as (http, producer):
        await producer.set("request:id:a", value(10), ex=3600)
        await shows(http, {"a": 10}, "SET")
        other = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1")
        try:
            await other.set("request:id:in-db-1", value(50), ex=3600)
            await producer.swapdb(0, 1)
            await shows(http, {"in-db-1": 50}, "SWAPDB")
            await producer.flushdb()
            await shows(http, {}, "FLUSHDB")
            await producer.set("request:id:b", value(10), ex=3600)
            await shows(http, {"b": 10}, "SET after FLUSHDB")
            await producer.flushall()
            await shows(http, {}, "FLUSHALL")
        finally:
            await other.flushall()
            await other.aclose()
        info = await feed(http)
        assert info["nullAnnouncements"] >= 2  # FLUSHDB, FLUSHALL (and the clean-up's); no SWAPDB...
        assert info["swapdbSeen"] == 1  # ...which INFO commandstats tells
        assert info["rescans"] >= 3
        assert (await finished(http))["a"] == "vanished"


async def test_eviction_under_maxmemory(own_redis_server: RedisServerProcess) -> None:
    async with following(own_redis_server.url) as (http, producer):
        await producer.config_set("maxmemory-policy", "allkeys-random")
        used = int((await producer.info("memory"))["used_memory"])
        await producer.config_set("maxmemory", used + 512 * 1024)
        for start in range(0, 4000, 200):
            async with producer.pipeline(transaction=False) as pipe:
                for i in range(start, start + 200):
                    pipe.set(f"request:id:t{i}", value(i % 100) + b" " * 200, ex=3600)
                await pipe.execute()
        evicted = int((await producer.info("stats"))["evicted_keys"])
        assert evicted > 0

        async def matches_redis() -> bool:
            keys = [key async for key in producer.scan_iter(match="request:id:*", count=1000)]
            return len(await running(http)) == len(keys)

        await eventually(matches_redis, "the running list holds exactly the keys left after eviction")


async def test_a_killed_feed_connection_reconnects_and_misses_nothing(redis_url: str) -> None:
    async with following(redis_url) as (http, producer):
        await producer.set("request:id:a", value(10), ex=3600)
        await shows(http, {"a": 10}, "SET")
        # the feed's connection is the one subscribed to the invalidation channel
        killed = await producer.client_kill_filter(_type="pubsub")
        assert killed == 1
        await producer.set("request:id:b", value(20), ex=3600)  # possibly announced to nobody
        await shows(http, {"a": 10, "b": 20}, "a write while the feed was down")

        async def live_again() -> bool:
            info = await feed(http)
            return bool(info["state"] == "live" and info["reconnects"] == 1)

        await eventually(live_again, "the feed is live again")
        await producer.set("request:id:c", value(30), ex=3600)
        await shows(http, {"a": 10, "b": 20, "c": 30}, "a write after the reconnect")


async def test_a_restarted_server_is_followed_again(own_redis_server: RedisServerProcess) -> None:
    async with following(own_redis_server.url) as (http, producer):
        await producer.set("request:id:a", value(10), ex=3600)
        await shows(http, {"a": 10}, "SET")
        own_redis_server.stop()
        own_redis_server.start()  # empty: it keeps nothing on disk
        await producer.set("request:id:b", value(20), ex=3600)
        await shows(http, {"b": 20}, "the restarted server's keys", timeout=15)

        async def live_again() -> bool:
            return bool((await feed(http))["state"] == "live")

        await eventually(live_again, "the feed is live again", timeout=15)
        await producer.set("request:id:c", value(30), ex=3600)
        await shows(http, {"b": 20, "c": 30}, "a write after the restart")
        assert (await finished(http))["a"] == "vanished"


async def test_ten_thousand_writes_in_a_burst(redis_url: str) -> None:
    async with following(redis_url) as (http, producer):
        await producer.set("request:id:seed", value(1), ex=3600)
        await shows(http, {"seed": 1}, "SET")
        expected = {"seed": 1}
        async with producer.pipeline(transaction=False) as pipe:
            for i in range(10_000):
                pipe.set(f"request:id:t{i}", value(i % 100), ex=3600)
                expected[f"t{i}"] = i % 100
            await pipe.execute()
        await shows(http, expected, "10,000 writes")
        info = await feed(http)
        assert info["namesReceived"] >= 10_000 and info["overflows"] == 0
        # a reconciliation scan finds nothing the feed did not announce
        app_refresh = http._transport.app.state.refresher  # type: ignore[attr-defined]
        await app_refresh.refresh("reconcile")
        info = await feed(http)
        assert info["reconciliations"] == 1 and info["lastMissed"] == 0


async def test_a_burst_larger_than_the_buffer_becomes_a_full_scan(redis_url: str) -> None:
    async with following(redis_url, change_buffer=100, change_batch_ms=200) as (http, producer):
        await shows(http, {}, "empty")
        async with producer.pipeline(transaction=False) as pipe:
            for i in range(1000):
                pipe.set(f"request:id:t{i}", value(1), ex=3600)
            await pipe.execute()

        async def all_there() -> bool:
            return len(await running(http)) == 1000

        await eventually(all_there, "1,000 tasks")
        info = await feed(http)
        assert info["overflows"] >= 1 and info["rescans"] >= 1


async def test_the_same_value_written_twice_keeps_the_etag(redis_url: str) -> None:
    async with following(redis_url) as (http, producer):
        await producer.set("request:id:a", value(10), ex=3600)
        await shows(http, {"a": 10}, "SET")
        etag = (await http.get(f"{API}/running")).headers["etag"]
        batches = (await feed(http))["batches"]
        await producer.set("request:id:a", value(10), keepttl=True)

        async def batch_done() -> bool:
            return bool((await feed(http))["batches"] > batches)

        await eventually(batch_done, "the write's batch")
        assert (await http.get(f"{API}/running")).headers["etag"] == etag


async def test_a_name_the_feed_lost_is_found_by_reconciliation_and_counted(redis_url: str) -> None:
    async with following(redis_url) as (http, producer):
        app = http._transport.app  # type: ignore[attr-defined]
        follower = app.state.endpoints.follower
        take = follower._take
        follower._take = lambda names: None  # the next announcements are lost
        await producer.set("request:id:lost", value(10), ex=3600)
        await asyncio.sleep(0.2)
        follower._take = take
        assert await running(http) == {}
        await app.state.refresher.refresh("reconcile")
        info = await feed(http)
        assert info["lastMissed"] == 1 and info["missed"] == 1
        assert await running(http) == {"lost": 10}


async def test_fallback_when_client_is_renamed_away(tmp_path: Any) -> None:
    server = RedisServerProcess(extra_args=("--rename-command", "CLIENT", ""))
    try:
        async with following(server.url, change_feed="auto") as (http, producer):
            info = await feed(http)
            assert info["state"] == "fallback"
            assert "unknown command" in info["reason"].lower()
            await producer.set("request:id:a", value(10), ex=3600)
            await shows(http, {"a": 10}, "a periodic scan")
    finally:
        server.close()


async def test_fallback_for_an_acl_user_that_may_not_use_client(redis_url: str) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    await admin.acl_setuser(
        "limited", enabled=True, passwords=["+limited-pw"], keys=["*"], commands=["+@all", "-client"]
    )
    try:
        url = redis_url.replace("redis://", "redis://limited:limited-pw@")
        async with following(url, change_feed="auto") as (http, producer):
            info = await feed(http)
            assert info["state"] == "fallback"
            assert "no permissions" in info["reason"].lower() or "noperm" in info["reason"].lower()
            await producer.set("request:id:a", value(10), ex=3600)
            await shows(http, {"a": 10}, "a periodic scan")
    finally:
        await admin.acl_deluser("limited")
        await admin.aclose()


async def test_change_feed_off_scans_periodically(redis_url: str) -> None:
    async with following(redis_url, change_feed="off") as (http, producer):
        info = await feed(http)
        assert info["state"] == "off"
        scans = info["fullScans"]
        await producer.set("request:id:a", value(10), ex=3600)
        await shows(http, {"a": 10}, "a periodic scan")
        assert (await feed(http))["fullScans"] > scans


async def test_hostile_values_through_the_feed_are_counted_and_never_fail_a_batch(redis_url: str) -> None:
    async with following(redis_url) as (http, producer):
        await producer.set("request:id:ok", value(10), ex=3600)
        await shows(http, {"ok": 10}, "SET")
        for name, hostile in HOSTILE.items():
            await producer.set(f"request:id:{name}", hostile, ex=3600)
        await producer.hset("request:id:a-hash", "process", "processing")
        await producer.set("request:id:", value(1), ex=3600)  # the empty id
        await producer.set("request:id:ok", value(20), ex=3600)
        await shows(http, {"ok": 20}, "the good task moves on beside the hostile ones")
        info = await feed(http)
        assert info["batchFailures"] == 0 and info["rescans"] == 0
        assert (await http.get("/readyz")).status_code == 200


async def test_a_hung_server_takes_the_feed_down_and_the_service_says_so(
    own_redis_server: RedisServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(change_feed, "PING_SECONDS", 0.5)
    async with following(own_redis_server.url, redis_timeout=500, cache_ttl=2) as (http, producer):
        await producer.set("request:id:a", value(10), ex=3600)
        await shows(http, {"a": 10}, "SET")
        own_redis_server.pause()  # SIGSTOP: connections stay open, nothing answers
        try:

            async def down() -> bool:
                return bool((await feed(http))["state"] == "reconnecting")

            await eventually(down, "the feed noticed the silence", timeout=10)

            async def unavailable() -> bool:
                return (await http.get(f"{API}/running")).status_code in (503, 504)

            await eventually(unavailable, "a stale snapshot is no longer served", timeout=10)
        finally:
            own_redis_server.resume()

        async def live_again() -> bool:
            return bool((await feed(http))["state"] == "live")

        await eventually(live_again, "the feed is live again", timeout=15)
        await producer.set("request:id:b", value(20), ex=3600)
        await shows(http, {"a": 10, "b": 20}, "a write after the server came back")


async def test_a_batch_past_fetch_max_bytes_reads_the_rest_in_bounded_fetches(redis_url: str) -> None:
    async with following(redis_url, fetch_max_bytes=1024, change_batch_ms=300) as (http, producer):
        await producer.set("request:id:first", value(1), ex=3600)
        await shows(http, {"first": 1}, "SET")  # the next batch waits out its interval: the writes below gather
        padding = b" " * 700  # each value alone is within the budget, any two are past it
        async with producer.pipeline(transaction=False) as pipe:
            for i in range(6):
                pipe.set(f"request:id:big{i}", value(i + 10) + padding, ex=3600)
            await pipe.execute()
        await shows(http, {"first": 1, **{f"big{i}": i + 10 for i in range(6)}}, "six values past the budget")
        info = await feed(http)
        assert info["batchFailures"] == 0 and info["rescans"] == 0


async def test_on_insists_when_refused_and_scans_periodically_meanwhile(caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServerProcess(extra_args=("--rename-command", "CLIENT", ""))
    try:
        async with following(server.url, change_feed="on") as (http, producer):
            info = await feed(http)
            assert info["state"] == "reconnecting" and "refused" in info["reason"]
            await producer.set("request:id:a", value(10), ex=3600)
            await shows(http, {"a": 10}, "a periodic scan")
        assert any(r.levelname == "ERROR" and 'change_feed = "on"' in r.getMessage() for r in caplog.records)
    finally:
        server.close()


async def test_a_feed_that_fails_unexpectedly_is_never_left_live(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with following(redis_url) as (http, producer):
        assert (await feed(http))["state"] == "live"
        real_names = change_feed.ChangeFeed.names
        calls = 0

        async def broken(self: change_feed.ChangeFeed) -> list[bytes] | None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("a reply the reader cannot handle")
            return await real_names(self)

        monkeypatch.setattr(change_feed.ChangeFeed, "names", broken)
        await producer.set("request:id:a", value(10), ex=3600)  # wakes the reader, which now fails once

        async def down() -> bool:
            return bool((await feed(http))["state"] == "reconnecting")

        await eventually(down, "the feed is marked down")
        assert "a reply the reader cannot handle" in (await feed(http))["reason"]
        await shows(http, {"a": 10}, "the periodic scans meanwhile")
    assert any("reading the announcements failed" in r.getMessage() for r in caplog.records)
