"""A change feed's batch goes on while a full scan runs (at a million keys a scan takes seconds, and the feed
must stay within milliseconds meanwhile), and what the batch read stands over what the scan reads of the same keys:
a scan that read a value before the batch does not bring it back, a task the batch added is not taken for gone,
a task the batch saw leave does not reappear. Against a real redis-server; the scan is held between reading a
page and taking it in, where the race is."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from service.domain.history import History
from service.domain.tracker import Tracker
from service.snapshot.refresher import Refresher
from service.source.redis_source import KeyMeta, RedisSource
from service.source.scanner import Scanner
from tests.conftest import make_settings

pytestmark = [pytest.mark.real_redis, pytest.mark.anyio]


def value(progress: int, process: str = "processing") -> bytes:
    return orjson.dumps({"process": process, "totalProgress": progress, "fileList": None})


class HeldSource(RedisSource):
    """A source whose reads for a full scan wait, once, after reading: the values are old when they are taken in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_done = asyncio.Event()
        self.release = asyncio.Event()
        self.hold = False

    async def read(self, metas: list[KeyMeta]) -> list[bytes | None]:
        values = await super().read(metas)
        if self.hold:
            self.hold = False
            self.read_done.set()
            await self.release.wait()
        return values


def progress_of(refresher: Refresher) -> dict[str, int]:
    assert refresher.snapshot is not None
    return {task.task_id: task.total_progress for task in refresher.snapshot.tasks}


async def test_a_batch_during_a_scan_is_applied_at_once_and_stands_over_the_scans_older_reading(
    redis_url: str,
) -> None:
    settings = make_settings(url=redis_url, scan_batch_size=1000, full_read_every=1).running_tasks
    producer = aioredis.Redis.from_url(redis_url)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await producer.flushall()
        for name in ("moved", "stays", "leaves"):
            await producer.set(f"request:id:{name}", value(10), ex=3600)
        source = HeldSource(client, fetch_max_bytes=settings.fetch_max_bytes)
        history = History(100)
        tracker = Tracker(settings.producer_key_ttl, on_departures=history.record)
        scanner = Scanner(source, settings, finished_sink=tracker.observe_finished)
        refresher = Refresher(scanner, tracker, settings)
        await refresher.refresh("startup")
        assert progress_of(refresher) == {"moved": 10, "stays": 10, "leaves": 10}

        source.hold = True  # every value is read again (full_read_every = 1), then the scan waits
        scan = asyncio.create_task(refresher.refresh("reconcile"))
        await asyncio.wait_for(source.read_done.wait(), 5)
        # the scan holds the old values; meanwhile the producer writes and the feed's batch reads
        await producer.set("request:id:moved", value(60), ex=3600)
        await producer.set("request:id:new", value(5), ex=3600)
        await producer.delete("request:id:leaves")
        keys = [b"request:id:moved", b"request:id:new", b"request:id:leaves"]
        reads = await asyncio.wait_for(refresher.apply_changes(keys), 5)  # not kept waiting for the scan
        assert reads is not None
        assert not scan.done()
        assert progress_of(refresher) == {"moved": 60, "stays": 10, "new": 5}
        source.release.set()
        await scan
        # the scan's older reading of `moved` and `leaves` lost; `new`, which it never saw, not taken for gone
        assert progress_of(refresher) == {"moved": 60, "stays": 10, "new": 5}
        assert [run.task_id for run in history.newest_first()] == ["leaves"]
        # announced and applied: not a reconciliation's find; nothing the feed did not announce
        assert refresher.last_scan_changes == set()
        # and the scanner remembers the batch's reading: the next scan finds nothing changed
        await refresher.refresh("reconcile")
        assert progress_of(refresher) == {"moved": 60, "stays": 10, "new": 5}
        assert refresher.last_scan_changes == set()
    finally:
        await producer.aclose()
        await client.aclose()
