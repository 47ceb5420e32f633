"""Target 1: one full refresh against the reference algorithm and the fetch floor, measured side by side."""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis

from service.domain.tracker import Tracker
from service.settings import Settings, settings_from_mapping
from service.snapshot.refresher import Refresher
from service.source.clients import create_client
from service.source.redis_source import RedisSource
from service.source.scanner import Scanner

RUNNING = frozenset(("pending", "processing", "running"))


def reference(url: str, pattern: str) -> tuple[float, int]:
    """SCAN with the default COUNT, one GET per key, a full JSON decode of every value: (seconds, running)."""
    running = 0
    with redis.Redis.from_url(url) as client:
        started = time.perf_counter()
        for key in client.scan_iter(match=pattern):
            try:
                value = client.get(key)
            except redis.ResponseError:  # a key of another type under the prefix
                continue
            if value is None:
                continue
            try:
                task = json.loads(value)
            except (ValueError, TypeError):
                continue
            if isinstance(task, dict) and task.get("process") in RUNNING:
                running += 1
        return time.perf_counter() - started, running


def floor(url: str, pattern: str, batch: int) -> tuple[float, int]:
    """SCAN COUNT `batch` + one MGET per page, values not decoded: (seconds, bytes fetched)."""
    fetched = 0
    with redis.Redis.from_url(url) as client:
        started = time.perf_counter()
        cursor = 0
        while True:
            cursor, keys = client.scan(cursor=cursor, match=pattern, count=batch)
            if keys:
                # MGET answers nil for keys of another type
                fetched += sum(len(v) for v in client.execute_command("MGET", *keys) if v is not None)
            if cursor == 0:
                break
        return time.perf_counter() - started, fetched


def service_settings(url: str, **running_tasks: object) -> Settings:
    return settings_from_mapping({"redis": {"url": url}, "running_tasks": {"max_scan_time": 600_000, **running_tasks}})


@dataclass
class Ours:
    """Our refresh in this process: cold (fresh state), then warm, then after a fraction of the values changed."""

    cold: list[float]
    warm: list[float]
    changed: list[float]
    running: int
    body_bytes: int


async def ours(url: str, reps: int, change: Callable[[int], Awaitable[object]], **running_tasks: object) -> Ours:
    settings = service_settings(url, **running_tasks)
    cold: list[float] = []
    warm: list[float] = []
    changed: list[float] = []
    running = body = 0
    for rep in range(reps):
        client = create_client(settings)
        try:
            refresher = _refresher(client, settings)
            cold.append(await _timed(refresher))
            warm.append(await _timed(refresher))
            await change(rep)
            changed.append(await _timed(refresher))
            assert refresher.snapshot is not None
            running, body = len(refresher.snapshot.tasks), len(refresher.snapshot.body)
        finally:
            await client.aclose()
        del refresher
        gc.collect()
    return Ours(cold, warm, changed, running, body)


def _refresher(client: redis.asyncio.Redis, settings: Settings) -> Refresher:
    rt = settings.running_tasks
    source = RedisSource(client, fetch_max_bytes=rt.fetch_max_bytes)
    return Refresher(Scanner(source, rt), Tracker(rt.producer_key_ttl), rt)


async def _timed(refresher: Refresher) -> float:
    started = time.perf_counter()
    await refresher.refresh("bench")
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


if __name__ == "__main__":  # a quick look without the whole bench: python -m bench.refresh [tasks]
    import sys

    from bench import workload

    async def main() -> None:
        tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
        loads = await workload.build(workload.Sizes(tasks, tasks))
        try:
            url = loads.url(workload.FULL_DB)
            print(f"built in {loads.build_seconds:.1f}s; running bytes {loads.full.running_value_bytes:,}")
            ref = reference(url, workload.KEY_PATTERN)
            print(f"reference {ref[0] * 1000:.0f} ms, running {ref[1]}")
            for batch in (100, 500, 1000):
                fl = floor(url, workload.KEY_PATTERN, batch)
                print(f"floor({batch}) {fl[0] * 1000:.0f} ms, {fl[1]:,} bytes")
            ids = loads.full.running_ids

            async def change(rep: int) -> None:
                await workload.touch_running(url, ids, 0.1, rep)

            for batch in (100, 500, 1000):
                result = await ours(url, 1, change, scan_batch_size=batch)
                print(
                    f"ours({batch}) cold {median(result.cold) * 1000:.0f} warm {median(result.warm) * 1000:.0f} "
                    f"changed {median(result.changed) * 1000:.0f} ms; running {result.running}"
                )
        finally:
            loads.server.close()

    asyncio.run(main())
