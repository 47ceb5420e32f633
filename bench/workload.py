"""The issue's workloads in a redis-server of the bench's own: the full (or quick) keyspace and the small case."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bench.processes import pin
from service.devtools.embedded import RedisServerProcess
from service.devtools.simulator import WorkloadSummary, build_workload

KEY_PATTERN = "request:id:*"
FULL_DB = 0  # the workload (or the quick mode's smaller one)
SMALL_DB = 1  # the reference deployment's typical load: 50 running tasks
IDLE_DB = 2  # empty: the service's resident memory with nothing loaded
# Tasks written for the small case: 60 % running after 1 % malformed gives exactly 50 running.
SMALL_TASKS = 84
# The acceptance figures' other sizes (db -> task keys): 5 running (fewer than 10) and 297 (more than 50).
ACCEPTANCE_DBS = {3: 9, 4: 500}


@dataclass(frozen=True)
class Sizes:
    tasks: int
    unrelated: int


FULL = Sizes(tasks=100_000, unrelated=100_000)
QUICK = Sizes(tasks=6_000, unrelated=6_000)


@dataclass
class Workloads:
    server: RedisServerProcess
    full: WorkloadSummary
    small: WorkloadSummary
    acceptance: dict[int, WorkloadSummary]
    now_ms: int
    build_seconds: float

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.server.port}/{db}"


async def build(sizes: Sizes, seed: int = 0) -> Workloads:
    """Start a redis-server on a free port and write both workloads (deterministic for a given seed)."""
    # No persistence, and a big enough client output buffer for MGET replies of several MB.
    server = RedisServerProcess()
    now_ms = int(time.time() * 1000)
    started = time.perf_counter()
    try:
        async with aioredis.Redis.from_url(f"redis://127.0.0.1:{server.port}/{FULL_DB}") as client:
            full = await build_workload(client, tasks=sizes.tasks, unrelated=sizes.unrelated, seed=seed, now_ms=now_ms)
        async with aioredis.Redis.from_url(f"redis://127.0.0.1:{server.port}/{SMALL_DB}") as client:
            small = await build_workload(client, tasks=SMALL_TASKS, unrelated=100, seed=seed + 1, now_ms=now_ms)
        acceptance: dict[int, WorkloadSummary] = {}
        for db, tasks in ACCEPTANCE_DBS.items():
            async with aioredis.Redis.from_url(f"redis://127.0.0.1:{server.port}/{db}") as client:
                acceptance[db] = await build_workload(
                    client, tasks=tasks, unrelated=1000, seed=seed + db, now_ms=now_ms
                )
    except BaseException:
        server.close()
        raise
    return Workloads(server, full, small, acceptance, now_ms, time.perf_counter() - started)


async def large_keyspace(url: str, tasks: int, file_range: tuple[int, int]) -> WorkloadSummary:
    """bench.million's workload (also bench.memory's, smaller): `tasks` task keys with `file_range` file entries
    each and no large task, and a fifth as many other keys."""
    async with aioredis.Redis.from_url(url) as client:
        return await build_workload(
            client,
            tasks=tasks,
            unrelated=tasks // 5,
            large_fraction=0.0,
            file_range=file_range,
            now_ms=int(time.time() * 1000),
        )


async def touch_running(url: str, ids: frozenset[str], fraction: float, seed: int, key_ttl: int = 3600) -> int:
    """Rewrite `fraction` of the running tasks as the producer would (one more file done); return how many."""
    rng = random.Random(seed)
    chosen = rng.sample(sorted(ids), round(len(ids) * fraction))
    async with aioredis.Redis.from_url(url) as client:
        for start in range(0, len(chosen), 500):
            keys = [f"request:id:{task_id}" for task_id in chosen[start : start + 500]]
            values = await client.mget(keys)
            async with client.pipeline(transaction=False) as pipe:
                for key, value in zip(keys, values, strict=True):
                    if value is not None:
                        pipe.set(key, _bump(value), ex=key_ttl)  # a rewrite resets the TTL, as the producer's SET EX
                await pipe.execute()
    return len(chosen)


async def rewrite_running(
    client: aioredis.Redis, ids: Sequence[str], fraction: float, seed: int, seconds: float, key_ttl: int = 3600
) -> int:
    """Rewrite `fraction` of the running tasks over `seconds` as the embedder does: for one task at a time, GET,
    modify, SET EX (no batches, no pipelines: those would hold Redis far longer than any of its writes do)."""
    chosen = random.Random(seed).sample(ids, round(len(ids) * fraction))
    started = time.monotonic()
    for index, task_id in enumerate(chosen):
        key = f"request:id:{task_id}"
        value = await client.get(key)
        if isinstance(value, bytes):
            await client.set(key, _bump(value), ex=key_ttl)
        ahead = started + seconds * (index + 1) / len(chosen) - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    return len(chosen)


def _bump(value: bytes) -> bytes:
    # One more file processed: the first "pending" entry becomes "completed"; else the progress moves by one.
    if b'"status":"pending"' in value:
        return value.replace(b'"status":"pending"', b'"status":"completed"', 1)
    marker = b'"totalProgress":'
    at = value.index(marker) + len(marker)
    end = at
    while value[end : end + 1].isdigit():
        end += 1
    progress = min(int(value[at:end]) + 1, 99)
    return value[:at] + str(progress).encode() + value[end:]


@contextlib.contextmanager
def producer(url: str, ids: frozenset[str], fraction_per_second: float) -> Iterator[Callable[[], int]]:
    """Rewrites a share of the running tasks every second, one task at a time as the embedder does, until the
    block ends; yields how many it has rewritten so far. It runs in a process of its own, on the load core: as a
    thread of the bench it took the bench's interpreter lock thousands of times a second, and the bench's
    freshness probes, polling in that interpreter, measured that wait as the service's. (Batched rewrites, 500
    values per MGET and per pipeline of SETs, held Redis long enough to double the Redis probe's p99.9 during
    refreshes: that was the bench's producer, not the service nor the embedder.)"""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    written = context.Value("q", 0, lock=False)
    process = context.Process(
        target=_produce, args=(url, sorted(ids), fraction_per_second, stop, written), name="producer", daemon=True
    )
    process.start()
    if process.pid is not None:
        pin(process.pid, "load")
    try:
        yield lambda: int(written.value)
    finally:
        stop.set()
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()


def _produce(url: str, ordered: list[str], fraction: float, stop: Any, written: Any) -> None:
    async def loop() -> None:
        rep = 1000
        async with aioredis.Redis.from_url(url) as client:
            while not stop.is_set():
                written.value += await rewrite_running(client, ordered, fraction, seed=rep, seconds=1.0)
                rep += 1

    asyncio.run(loop())
