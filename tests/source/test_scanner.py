from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from service.devtools.embedded import RedisServerProcess
from service.domain.tasks import Observation
from service.source.failures import ScanTimeout
from service.source.redis_source import MISSING, NO_EXPIRY, WRONG_TYPE, KeyMeta, RedisSource, ScanPage
from service.source.scanner import Scanner, ScanStats
from tests.conftest import make_settings

RUNNING = b'{"process":"processing","totalProgress":%d,"fileList":null}'


def value(progress: int = 10, process: str = "processing", files: int = 1) -> bytes:
    entries = ",".join(f'{{"path":"f{i}","status":"pending","operate":"add"}}' for i in range(files))
    return b'{"process":"%s","totalProgress":%d,"fileList":[%s]}' % (process.encode(), progress, entries.encode())


async def run_scan(scanner: Scanner) -> tuple[ScanStats, list[Observation]]:
    seen: list[Observation] = []
    stats = await scanner.scan(seen.extend)
    return stats, seen


def scanner_for(client: aioredis.Redis, source_cls: type[RedisSource] = RedisSource, **settings: object) -> Scanner:
    rt = make_settings(**settings).running_tasks
    return Scanner(source_cls(client, fetch_max_bytes=rt.fetch_max_bytes), rt)


async def write_mixed(client: aioredis.Redis) -> None:
    await client.set("request:id:run-1", value(10), ex=3600)
    await client.set("request:id:run-2", value(0, "pending"), ex=3600)
    await client.set("request:id:run-3", value(50, "running"), ex=3600)
    for i, status in enumerate(("complete", "completed", "failed")):
        await client.set(f"request:id:done-{i}", value(100, status), ex=3600)
    await client.set("request:id:", b'{"process":"pending"}')
    await client.set("request:id:junk", b"\x00not json")
    await client.set("request:id:list-json", b"[1,2,3]")
    await client.set("request:id:bad-progress", b'{"process":"processing","totalProgress":"40"}')
    await client.hset("request:id:a-hash", "process", "processing")
    await client.rpush("request:id:a-list", "x")
    await client.set("codebase_embedder:lock:cleaner", b"1")
    await client.set("othersvc:request:id:x", value(10))


EXPECTED_MIXED = {
    "keys_scanned": 12,
    "empty_id": 1,
    "values_fetched": 9,
    "malformed": 5,
    "wrong_type": 2,
    "matched": 3,
    "finished": 3,
    "expired": 0,
    "duplicates": 0,
}


def check_stats(stats: ScanStats, expected: dict[str, int]) -> None:
    assert {key: getattr(stats, key) for key in expected} == expected


def test_counts_every_kind_of_key_fakeredis() -> None:
    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        await write_mixed(client)
        stats, seen = await run_scan(scanner_for(client))
        check_stats(stats, EXPECTED_MIXED)
        assert sorted(o.task.task_id for o in seen) == ["run-1", "run-2", "run-3"]

    asyncio.run(main())


@pytest.mark.real_redis
def test_counts_every_kind_of_key_real_redis(redis_url: str) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            await write_mixed(client)
            stats, seen = await run_scan(scanner_for(client))
        check_stats(stats, EXPECTED_MIXED)
        assert {o.task.task_id: o.task.process for o in seen} == {
            "run-1": "processing",
            "run-2": "pending",
            "run-3": "running",
        }
        assert all(3_590_000 < o.pttl <= 3_600_000 for o in seen)

    asyncio.run(main())


def test_running_statuses_are_configurable() -> None:
    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        await write_mixed(client)
        stats, seen = await run_scan(scanner_for(client, running_statuses=["failed"]))
        assert [o.task.task_id for o in seen] == ["done-2"]
        assert (stats.matched, stats.finished) == (1, 5)

    asyncio.run(main())


def test_unchanged_values_are_not_decoded_again() -> None:
    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        await write_mixed(client)
        scanner = scanner_for(client)
        first, _ = await run_scan(scanner)
        assert first.decoded == 9
        await client.set("request:id:run-1", value(20), ex=3600)
        second, seen = await run_scan(scanner)
        assert second.decoded == 1  # only the value that changed
        check_stats(second, EXPECTED_MIXED)  # unchanged malformed values still count as malformed
        assert {o.task.task_id: o.task.total_progress for o in seen}["run-1"] == 20

    asyncio.run(main())


@pytest.mark.real_redis
def test_a_key_that_is_not_utf8_is_malformed_and_never_read(redis_url: str) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            await client.set(b"request:id:\xff\xfe", value(10), ex=3600)
            await client.set("request:id:run-1", value(10), ex=3600)
            scanner = scanner_for(client)
            stats, seen = await run_scan(scanner)
            check_stats(stats, {"keys_scanned": 2, "malformed": 1, "matched": 1, "values_fetched": 1})
            assert [o.task.task_id for o in seen] == ["run-1"]
            reads = await scanner.read_keys([b"request:id:\xff\xfe", b"request:id:run-1"])
            assert (reads.stats.malformed, [o.task.task_id for o in reads.running], reads.absent) == (1, ["run-1"], [])

    asyncio.run(main())


def test_a_running_task_s_id_is_one_string_however_often_its_value_is_read() -> None:
    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        await client.set("request:id:run-1", value(10), ex=3600)
        scanner = scanner_for(client)
        _, seen = await run_scan(scanner)
        first = seen[0].task.task_id
        await client.set("request:id:run-1", value(20), ex=3500)  # a change feed's batch reads the new value
        reads = await scanner.read_keys([b"request:id:run-1"])
        assert reads.running[0].task.total_progress == 20
        assert reads.running[0].task.task_id is first
        await client.set("request:id:run-1", value(30), ex=3400)  # a scan reads it
        _, seen = await run_scan(scanner)
        assert seen[0].task.total_progress == 30
        assert seen[0].task.task_id is first
        _, seen = await run_scan(scanner)  # unchanged: from memory
        assert seen[0].task.task_id is first
        assert scanner.take_changed() == set()  # reported as bytes keys, as the feed names them

    asyncio.run(main())


def test_a_worker_gives_the_loop_a_turn_between_slices_of_a_large_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Values decoded in one step are bounded in bytes: a fetch of large values does not hold the event loop.
    import service.source.scanner as scanner_module

    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        for i in range(20):
            await client.set(f"request:id:t{i}", value(i, files=40), ex=3600)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        steps: list[tuple[int, int]] = []  # (loop turns so far, tasks handed over in the step)
        monkeypatch.setattr(scanner_module, "_DECODE_BYTES_PER_STEP", 3 * len(value(0, files=40)))
        scanner = scanner_for(client, scan_batch_size=20, worker_count=1)
        background = asyncio.create_task(ticker())
        try:
            stats = await scanner.scan(lambda page: steps.append((ticks, len(page))))
        finally:
            background.cancel()
        assert stats.matched == 20 and stats.fetches == 1
        assert [n for _, n in steps] == [3] * 6 + [2]  # 3 values a step, the last 2
        turns = [t for t, _ in steps]
        assert all(later > earlier for earlier, later in itertools.pairwise(turns))  # the loop ran between steps

    asyncio.run(main())


class PageRecording(RedisSource):
    pages: list[list[bytes]] = []

    async def scan_pages(self, pattern: str, count: int) -> AsyncIterator[ScanPage]:
        async for page in super().scan_pages(pattern, count):
            PageRecording.pages.append(page.keys)
            yield page


def test_each_task_carries_the_time_its_page_was_scanned() -> None:
    # Values to read are gathered across pages into one fetch; each task still carries its own page's time, from
    # which its write time is derived (the TTL), not the time of the fetch.
    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        for i in range(40):
            await client.set(f"request:id:t{i}", value(i), ex=3600)
        ticks = iter(range(1_000_000, 10_000_000, 1000))
        rt = make_settings(scan_batch_size=4).running_tasks
        scanner = Scanner(PageRecording(client, fetch_max_bytes=rt.fetch_max_bytes), rt, clock=lambda: next(ticks))
        for rewrite in (False, True):
            if rewrite:
                for i in (3, 17, 29):  # read again, in one fetch, from pages far apart
                    await client.set(f"request:id:t{i}", value(i + 1), ex=3600)
            PageRecording.pages = []
            before = next(ticks)
            stats, seen = await run_scan(scanner)
            page_time = {key: before + 2000 + 1000 * n for n, keys in enumerate(PageRecording.pages) for key in keys}
            assert len(seen) == 40 and len(PageRecording.pages) > 5
            assert {o.seen_ms for o in seen} == set(page_time.values())
            assert all(o.seen_ms == page_time[f"request:id:{o.task.task_id}".encode()] for o in seen)
        assert stats.decoded == 3 and stats.fetches == 1

    asyncio.run(main())


async def scanned(source: RedisSource, keys: list[bytes]) -> list[KeyMeta]:
    """`keys` as a full scan of the source sees them; a key no page has is MISSING (gone since SCAN)."""
    found = {meta.key: meta async for page in source.scan_pages("request:id:*", 1000) for meta in page.metas()}
    return [found.get(key, KeyMeta(key, MISSING, 0, MISSING)) for key in keys]


class DuplicatingSource(RedisSource):
    """SCAN may return a key more than once in one iteration; this one always does."""

    async def scan_pages(self, pattern: str, count: int) -> AsyncIterator[ScanPage]:
        async for page in super().scan_pages(pattern, count):
            yield ScanPage(
                page.now_ms,
                page.keys + page.keys[:2],
                page.expire_ats + page.expire_ats[:2],
                page.sizes + page.sizes[:2],
            )
            yield ScanPage(page.now_ms, page.keys[:1], page.expire_ats[:1], page.sizes[:1])


def test_keys_returned_twice_count_once() -> None:
    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        for i in range(30):
            await client.set(f"request:id:t{i}", value(i), ex=3600)
        stats, seen = await run_scan(scanner_for(client, DuplicatingSource, scan_batch_size=7))
        assert stats.keys_scanned == 30
        assert stats.duplicates > 0
        assert sorted(o.task.task_id for o in seen) == sorted(f"t{i}" for i in range(30))

    asyncio.run(main())


@pytest.mark.real_redis
def test_scan_while_the_keyspace_grows_reports_each_task_once(redis_url: str) -> None:
    # Writes during the scan make Redis rehash its table, the case where real SCAN repeats keys.
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            pipe = client.pipeline(transaction=False)
            for i in range(3000):
                pipe.set(f"request:id:t{i}", value(i % 100), ex=3600)
            await pipe.execute()
            scanner = scanner_for(client, scan_batch_size=50, worker_count=4)

            async def grow() -> None:
                for chunk in range(20):
                    pipe = client.pipeline(transaction=False)
                    for i in range(500):
                        pipe.set(f"filler:{chunk}:{i}", b"x")
                    await pipe.execute()
                    await asyncio.sleep(0)

            (stats, seen), _ = await asyncio.gather(run_scan(scanner), grow())
        ids = [o.task.task_id for o in seen]
        assert len(ids) == len(set(ids)) == stats.matched == stats.keys_scanned == 3000

    asyncio.run(main())


class ExpiringSource(RedisSource):
    """Deletes every other key of each page right after SCAN returned it: keys that expire before the fetch."""

    async def scan_pages(self, pattern: str, count: int) -> AsyncIterator[ScanPage]:
        async for page in super().scan_pages(pattern, count):
            doomed = page.keys[::2]
            if doomed:
                await self.client.delete(*doomed)
            yield page


@pytest.mark.real_redis
def test_keys_expired_before_the_fetch_are_skipped_and_counted(redis_url: str) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            for i in range(200):
                await client.set(f"request:id:t{i}", value(5), ex=3600)
            stats, seen = await run_scan(scanner_for(client, ExpiringSource, scan_batch_size=20))
        assert stats.expired > 0
        assert stats.expired + stats.matched == stats.keys_scanned == 200
        assert len(seen) == stats.matched

    asyncio.run(main())


@pytest.mark.real_redis
def test_many_pages_go_through_the_worker_pool(redis_url: str) -> None:
    class Recording(RedisSource):
        in_flight = 0
        peak = 0
        fetch_started_before_scan_ended = False
        scan_done = False

        async def scan_pages(self, pattern: str, count: int) -> AsyncIterator[ScanPage]:
            async for page in super().scan_pages(pattern, count):
                yield page
            Recording.scan_done = True

        async def read(self, metas: list[KeyMeta]) -> list[bytes | None]:
            Recording.in_flight += 1
            Recording.peak = max(Recording.peak, Recording.in_flight)
            Recording.fetch_started_before_scan_ended |= not Recording.scan_done
            try:
                await asyncio.sleep(0.005)  # a slower network: fetches must overlap
                return await super().read(metas)
            finally:
                Recording.in_flight -= 1

    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            pipe = client.pipeline(transaction=False)
            for i in range(5000):
                pipe.set(f"request:id:t{i}", value(i % 100, files=3), ex=3600)
                pipe.set(f"other:{i}", b"x")
            await pipe.execute()
            stats, seen = await run_scan(scanner_for(client, Recording, scan_batch_size=100, worker_count=4))
        assert stats.matched == len(seen) == 5000
        assert stats.fetches == 50  # full batches even though SCAN pages with MATCH are short
        assert stats.pages > 50
        assert Recording.peak == 4
        assert Recording.fetch_started_before_scan_ended

    asyncio.run(main())


@pytest.mark.real_redis
def test_fetches_are_bounded_in_bytes(redis_url: str) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            big = value(10, files=2000)  # ~100 KB
            huge = value(10, files=6000)  # ~300 KB: more than the bound on its own
            for i in range(20):
                await client.set(f"request:id:t{i}", huge if i == 7 else big, ex=3600)
            source = RedisSource(client, fetch_max_bytes=250_000)
            reads: list[int] = []
            real_command = source._command

            async def recording(*args: bytes) -> Any:
                reply = await real_command(*args)
                if args[0] == b"MGET":  # what RedisSource.fetch reads values with
                    reads.append(sum(len(v) for v in reply))
                return reply

            source._command = recording  # type: ignore[method-assign]
            keys = [f"request:id:t{i}".encode() for i in range(20)]
            metas = await scanned(source, keys)
            values = await source.read(metas)
        assert values == [huge if i == 7 else big for i in range(20)]
        assert [meta.size for meta in metas] == [len(v or b"") for v in values]  # SCAN's page tells the sizes
        # no read over the bound but the one value that is larger on its own; two 100 KB values per read
        assert sorted(reads) == sorted([len(huge)] + [2 * len(big)] * 9 + [len(big)])
        assert all(3_590_000 < meta.pttl <= 3_600_000 for meta in metas)

    asyncio.run(main())


@pytest.mark.real_redis
def test_scan_pages_tell_each_key_s_expiry_and_length(redis_url: str) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            await client.set("request:id:ttl", value(1), ex=3600)
            await client.set("request:id:no-ttl", value(2))
            await client.hset("request:id:hash", "process", "processing")
            await client.set("other:key", b"x")
            source = RedisSource(client, fetch_max_bytes=1024)
            metas = await scanned(source, [b"request:id:ttl", b"request:id:no-ttl", b"request:id:hash"])
            assert await source.read([]) == []  # nothing wanted: no command
        ttl, no_ttl, wrong = metas
        assert (ttl.size, no_ttl.size) == (len(value(1)), len(value(2)))
        assert ttl.expire_at > 0 and 3_590_000 < ttl.pttl <= 3_600_000
        assert (no_ttl.expire_at, no_ttl.pttl) == (NO_EXPIRY, NO_EXPIRY)
        assert (wrong.expire_at, wrong.size, wrong.pttl) == (WRONG_TYPE, 0, WRONG_TYPE)

    asyncio.run(main())


class ReadRecording(RedisSource):
    calls: list[list[bytes]] = []  # the keys of each read that asked for any

    async def read(self, metas: list[KeyMeta]) -> list[bytes | None]:
        if metas:
            ReadRecording.calls.append([meta.key for meta in metas])
        return await super().read(metas)

    @staticmethod
    def keys() -> list[bytes]:
        return [key for call in ReadRecording.calls for key in call]

    @staticmethod
    def sizes() -> list[int]:
        return [len(call) for call in ReadRecording.calls]


@pytest.mark.real_redis
def test_only_values_whose_expiry_moved_are_read_again(redis_url: str) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            await client.set("request:id:ttl", value(1), ex=3600)
            await client.set("request:id:ttl-2", value(4), ex=3600)
            await client.set("request:id:no-ttl", value(2))
            await client.hset("request:id:hash", "process", "processing")
            scanner = scanner_for(client, ReadRecording)
            ReadRecording.calls = []
            first, _ = await run_scan(scanner)
            assert sorted(ReadRecording.keys()) == [b"request:id:no-ttl", b"request:id:ttl", b"request:id:ttl-2"]
            ReadRecording.calls = []
            second, seen = await run_scan(scanner)
            assert ReadRecording.keys() == [b"request:id:no-ttl"]  # without an expiry: always read
            assert (second.values_reused, second.wrong_type, second.matched) == (2, 1, 3)
            ReadRecording.calls = []
            await client.set("request:id:ttl", value(3), ex=3600)  # a producer rewrite moves the expiry
            third, seen = await run_scan(scanner)
        assert sorted(ReadRecording.keys()) == [b"request:id:no-ttl", b"request:id:ttl"]
        assert {o.task.task_id: o.task.total_progress for o in seen} == {"ttl": 3, "ttl-2": 4, "no-ttl": 2}
        assert first.wrong_type == third.wrong_type == 1

    asyncio.run(main())


@pytest.mark.real_redis
def test_values_to_read_again_are_gathered_into_full_fetches(redis_url: str) -> None:
    # 2,000 keys scanned 10 at a time; 30 of them rewritten, spread over the keyspace: a few fetches of up to
    # 10 values (from up to 40 keys each), not one small fetch per page
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            async with client.pipeline(transaction=False) as pipe:
                for i in range(2000):
                    pipe.set(f"request:id:t{i}", value(i % 100), ex=3600)
                await pipe.execute()
            scanner = scanner_for(client, ReadRecording, scan_batch_size=10)
            ReadRecording.calls = []
            cold, _ = await run_scan(scanner)
            assert (
                sum(ReadRecording.sizes()) == 2000 and max(ReadRecording.sizes()) <= 10
            )  # cold: every value, by the batch
            ReadRecording.calls = []
            warm, _ = await run_scan(scanner)
            assert ReadRecording.calls == [] and warm.values_reused == 2000 and warm.fetches <= 2000 // 40 + 1
            for i in range(0, 2000, 67):
                await client.set(f"request:id:t{i}", value(7, "running"), ex=3600)
            ReadRecording.calls = []
            changed, seen = await run_scan(scanner)
        assert sum(ReadRecording.sizes()) == 30 and max(ReadRecording.sizes()) <= 10
        assert len(ReadRecording.calls) <= 2000 // 40 + 1  # a fetch per 40 keys at most, not one per page (200)
        assert (changed.decoded, changed.values_reused, changed.matched) == (30, 1970, 2000)
        assert sorted(int(o.task.task_id[1:]) for o in seen if o.task.process == "running") == list(range(0, 2000, 67))

    asyncio.run(main())


def test_values_are_read_again_every_full_read_every_scans() -> None:
    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        for i in range(5):
            await client.set(f"request:id:t{i}", value(i), ex=3600)
        scanner = scanner_for(client, full_read_every=3)
        reused = [(await run_scan(scanner))[0].values_reused for _ in range(6)]
        assert reused == [0, 5, 0, 5, 5, 0]  # the first scan has nothing to reuse; every third reads all

    asyncio.run(main())


def test_a_rewrite_that_keeps_the_ttl_is_seen_at_the_next_full_read() -> None:
    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        await client.set("request:id:t", value(10), ex=3600)
        scanner = scanner_for(client, full_read_every=2)
        await run_scan(scanner)  # scan 1
        await client.set("request:id:t", value(20), keepttl=True)  # same length, same expiry
        _, seen = await run_scan(scanner)  # scan 2: every 2nd scan reads everything
        assert [o.task.total_progress for o in seen] == [20]

    asyncio.run(main())


@pytest.mark.real_redis
def test_scan_over_budget_is_abandoned(own_redis_server: RedisServerProcess) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(own_redis_server.url, socket_timeout=5) as client:
            await client.set("request:id:a", value(), ex=3600)
            scanner = scanner_for(client, max_scan_time=300, redis_timeout=5000)
            own_redis_server.pause()
            started = time.monotonic()
            try:
                with pytest.raises(ScanTimeout):
                    await run_scan(scanner)
            finally:
                own_redis_server.resume()
            assert time.monotonic() - started < 3

    asyncio.run(main())


@pytest.mark.real_redis
@pytest.mark.parametrize("failure", ["timeout", "connection lost"])
def test_a_failed_scan_keeps_what_it_decoded_for_the_next_one(redis_url: str, failure: str) -> None:
    # A first scan that needs longer than max_scan_time must not start from nothing at every attempt.
    class FailsOnThirdRead(RedisSource):
        reads = 0

        async def read(self, metas: list[KeyMeta]) -> list[bytes | None]:
            FailsOnThirdRead.reads += 1
            if FailsOnThirdRead.reads == 3:
                if failure == "timeout":
                    await asyncio.Event().wait()  # never answers: the scan's budget runs out
                raise redis.exceptions.ConnectionError("lost mid-scan")
            return await super().read(metas)

    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            for i in range(300):
                await client.set(f"request:id:t{i:03d}", value(i % 100), ex=3600)
            scanner = scanner_for(client, FailsOnThirdRead, scan_batch_size=50, worker_count=1, max_scan_time=1000)
            expected = ScanTimeout if failure == "timeout" else redis.exceptions.ConnectionError
            with pytest.raises(expected):
                await run_scan(scanner)
            stats, seen = await run_scan(scanner)
            assert (stats.values_reused, stats.decoded, stats.matched) == (100, 200, 300)
            assert sorted(o.task.task_id for o in seen) == [f"t{i:03d}" for i in range(300)]

    asyncio.run(main())


def test_the_budget_holds_when_a_cancellation_is_lost_on_the_way() -> None:
    # On Python 3.11, redis-py's send (asyncio.wait_for) can swallow the cancellation of asyncio.timeout
    # (CPython gh-86296): the scan must still stop at its next page.
    class LosesCancellations(RedisSource):
        async def scan_pages(self, pattern: str, count: int) -> AsyncIterator[ScanPage]:
            for i in range(1000):
                try:
                    await asyncio.sleep(0.005)
                except asyncio.CancelledError:
                    pass  # lost, as wait_for loses it when the call it wraps has just finished
                yield ScanPage(0, [b"request:id:t%d" % i], [MISSING], [0])

    async def main() -> None:
        scanner = scanner_for(fakeredis.FakeAsyncRedis(), LosesCancellations, max_scan_time=100)
        with pytest.raises(ScanTimeout):
            await run_scan(scanner)
        assert scanner.current is not None and scanner.current.pages < 1000

    asyncio.run(main())


@pytest.mark.real_redis
def test_a_hung_redis_times_out(own_redis_server: RedisServerProcess) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(own_redis_server.url, socket_timeout=0.2) as client:
            await client.set("request:id:a", value(), ex=3600)
            own_redis_server.pause()
            try:
                with pytest.raises(redis.exceptions.TimeoutError):
                    await run_scan(scanner_for(client, max_scan_time=10_000))
            finally:
                own_redis_server.resume()

    asyncio.run(main())


@pytest.mark.real_redis
def test_redis_dying_mid_scan_fails_the_scan(own_redis_server: RedisServerProcess) -> None:
    class Dying(RedisSource):
        async def read(self, metas: list[KeyMeta]) -> list[bytes | None]:
            own_redis_server.kill()
            return await super().read(metas)

    async def main() -> None:
        async with aioredis.Redis.from_url(own_redis_server.url, socket_timeout=1) as client:
            for i in range(300):
                await client.set(f"request:id:t{i}", value(), ex=3600)
            with pytest.raises(redis.exceptions.ConnectionError):
                await run_scan(scanner_for(client, Dying, scan_batch_size=50))

    asyncio.run(main())


def test_finished_values_are_reported_once_when_decoded() -> None:
    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        await write_mixed(client)
        finished: list[Observation] = []
        rt = make_settings().running_tasks
        scanner = Scanner(RedisSource(client, fetch_max_bytes=rt.fetch_max_bytes), rt, finished_sink=finished.extend)
        await run_scan(scanner)
        assert sorted((o.task.task_id, o.task.process) for o in finished) == [
            ("done-0", "complete"),
            ("done-1", "completed"),
            ("done-2", "failed"),
        ]
        assert all(o.pttl > 0 and o.task.total_progress == 100 for o in finished)
        finished.clear()
        await run_scan(scanner)
        assert finished == []  # unchanged values are not decoded, nor reported, again
        await client.set("request:id:run-1", value(100, "completed"), ex=3600)
        await run_scan(scanner)
        assert [o.task.task_id for o in finished] == ["run-1"]

    asyncio.run(main())


def test_absurd_producer_times_do_not_break_a_refresh() -> None:
    from service.http.app import create_app
    from tests.conftest import running_app

    async def main() -> None:
        client = fakeredis.FakeAsyncRedis()
        await client.set(
            "request:id:far",
            b'{"process":"processing","totalProgress":5,"fileList":null,"startTime":100000000000000000,'
            b'"lastUpdateTime":"0001-01-01T00:00:00Z"}',
        )
        await client.set("request:id:ok", value(5), ex=3600)
        async with running_app(create_app(make_settings(), redis=client)) as http:
            response = await http.get("/codebase-embedder/api/v1/tasks/running")
        assert response.status_code == 200
        tasks = {t["taskId"]: t for t in response.json()["data"]["tasks"]}
        assert set(tasks) == {"far", "ok"}
        assert tasks["far"]["startTime"][:4] == tasks["ok"]["startTime"][:4]  # unreadable: first sighting instead

    asyncio.run(main())


@pytest.mark.real_redis
def test_fetch_loads_its_script_again_after_a_script_flush(redis_url: str) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            await client.set("request:id:a", value(5), ex=3600)
            source = RedisSource(client, fetch_max_bytes=1024)
            assert await source.read(await scanned(source, [b"request:id:a"])) == [value(5)]
            await client.script_flush()  # as after a Redis restart
            assert await source.read(await scanned(source, [b"request:id:a"])) == [value(5)]

    asyncio.run(main())


async def evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def fill(client: aioredis.Redis, count: int) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.set(f"request:id:t{i}", value(i % 100), ex=3600)
        await pipe.execute()


@pytest.mark.real_redis
def test_the_next_page_is_asked_for_before_a_page_is_handed_on(redis_url: str) -> None:
    # Redis walks page n+1 while page n is handled: when a page is handed on, its successor's call is already
    # sent (and, after a pause, answered), and never more than that one.
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client, aioredis.Redis.from_url(redis_url) as watcher:
            await fill(client, 1500)
            source = RedisSource(client, fetch_max_bytes=1024)
            await watcher.config_resetstat()
            handed, calls_seen, keys = 0, [], set()
            async with aclosing(source.scan_pages("request:id:*", 100)) as pages:
                async for page in pages:
                    handed += 1
                    keys.update(page.keys)
                    await asyncio.sleep(0.02)
                    calls_seen.append(await evalsha_calls(watcher))
        assert handed > 5 and len(keys) == 1500
        assert calls_seen[:-1] == [n + 1 for n in range(1, handed)]  # one call ahead ...
        assert calls_seen[-1] == handed  # ... and none after the last page (cursor 0)

    asyncio.run(main())


@pytest.mark.real_redis
def test_leaving_the_pages_early_leaves_no_reply_behind(redis_url: str) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url, max_connections=1) as client:
            await fill(client, 1000)
            source = RedisSource(client, fetch_max_bytes=1024)
            async with aclosing(source.scan_pages("request:id:*", 50)) as pages:
                async for _ in pages:
                    break  # the second page's call is in flight here
            # one connection in the pool: had the unread reply stayed on it, these would read it
            assert await client.ping() is True
            assert await client.get("request:id:t7") == value(7)
            metas = await scanned(source, [b"request:id:t%d" % i for i in range(1000)])
            assert all(meta.expire_at > 0 for meta in metas)  # a whole scan again, every key found

    asyncio.run(main())


@pytest.mark.real_redis
def test_a_script_flush_between_pages_does_not_lose_a_page(redis_url: str) -> None:
    async def main() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            await fill(client, 1000)
            source = RedisSource(client, fetch_max_bytes=1024)
            keys: set[bytes] = set()
            pages = 0
            async for page in source.scan_pages("request:id:*", 50):
                pages += 1
                keys.update(page.keys)
                if pages in (1, 3):
                    await client.script_flush()  # as after a failover; the call in flight already ran
        assert pages > 4 and len(keys) == 1000

    asyncio.run(main())


@pytest.mark.real_redis
def test_a_redis_without_pexpiretime_still_scans() -> None:
    # Redis before 7.0 has no PEXPIRETIME; a server with the command renamed away behaves the same.
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServerProcess(extra_args=("--rename-command", "PEXPIRETIME", ""))
    try:

        async def main() -> None:
            async with aioredis.Redis.from_url(server.url) as client:
                with pytest.raises(redis.exceptions.ResponseError):
                    await client.execute_command("PEXPIRETIME", "request:id:t0")
                for i in range(50):
                    await client.set(f"request:id:t{i}", value(i), ex=3600)
                await client.hset("request:id:h", "process", "processing")
                scanner = scanner_for(client, scan_batch_size=20)
                first, seen = await run_scan(scanner)
                assert (first.matched, first.wrong_type) == (50, 1)
                assert all(3_590_000 < o.pttl <= 3_600_000 for o in seen)
                await client.set("request:id:t3", value(99), ex=3600)
                second, seen = await run_scan(scanner)
                assert second.matched == 50
                assert {o.task.task_id: o.task.total_progress for o in seen}["t3"] == 99

        asyncio.run(main())
    finally:
        server.close()
