"""Response size and time of the query API against the unfiltered read, on the full 100,000-key workload.

Starts its own redis-server on a free port, writes `build_workload(tasks=100_000, unrelated=100_000)` (half the
tasks from a newer producer that writes a clientId), builds the snapshot once, serves it with uvicorn on
loopback and times each request to its last byte. "cold" is the first query on a snapshot (the query cache and
the id index dropped before each sample), "cached" a repeat. Ratios are against the unfiltered read measured in
the same run.

    .venv/bin/python bench/query_sizes.py [--tasks 100000] [--unrelated 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvicorn

from service.devtools.embedded import RedisServerProcess, free_port
from service.devtools.simulator import build_workload
from service.http.app import create_app
from service.settings import settings_from_mapping

RUNNING = "/codebase-embedder/api/v1/tasks/running"
API = "/codebase-embedder/api/v1/tasks"


def measure(http: httpx.Client, url: str, repeat: int, reset: Callable[[], None]) -> tuple[int, float, float]:
    """Body bytes, median cold ms, median cached ms (time to the last byte)."""
    cold: list[float] = []
    cached: list[float] = []
    size = 0
    for _ in range(repeat):
        reset()
        started = time.perf_counter()
        response = http.get(url)
        cold.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
        size = len(response.content)
        started = time.perf_counter()
        again = http.get(url)
        cached.append((time.perf_counter() - started) * 1000)
        assert again.content == response.content
    return size, statistics.median(cold), statistics.median(cached)


async def write_workload(url: str, tasks: int, unrelated: int) -> None:
    async with aioredis.Redis.from_url(url) as client:
        started = time.perf_counter()
        summary = await build_workload(
            client, tasks=tasks, unrelated=unrelated, newer_producer_fraction=0.5, now_ms=int(time.time() * 1000)
        )
    print(
        f"workload: {tasks:,} task keys ({summary.running_total:,} running), {unrelated:,} unrelated, "
        f"written in {time.perf_counter() - started:.1f} s"
    )


def main(tasks: int, unrelated: int, repeat: int) -> None:
    server = RedisServerProcess()
    try:
        asyncio.run(write_workload(server.url, tasks, unrelated))
        settings = settings_from_mapping(
            {
                "redis": {"url": server.url},
                # one snapshot for the whole run: no job, no staleness, room for the scan
                "running_tasks": {"refresh_interval": 3600, "cache_ttl": 3600, "max_scan_time": 600_000},
            }
        )
        app = create_app(settings)
        # A real HTTP server on loopback in a thread of its own: what a dashboard sees, body transfer included.
        web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
        thread = threading.Thread(target=web.run, name="uvicorn", daemon=True)
        thread.start()
        while not web.started:
            if not thread.is_alive():
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.05)
        try:
            rows = run_cases(app, f"http://127.0.0.1:{web.config.port}", repeat)
        finally:
            web.should_exit = True
            thread.join(timeout=30)
    finally:
        server.close()
    report(rows, repeat)


def run_cases(app: Any, base_url: str, repeat: int) -> list[tuple[str, int, float, float]]:
    snapshot = app.state.refresher.snapshot
    queries = app.state.queries
    print(f"snapshot: {len(snapshot.tasks):,} running tasks, body {len(snapshot.body):,} bytes")
    some_client = next(t.client_id for t in snapshot.tasks if t.client_id)
    big = max(snapshot.tasks, key=lambda t: t.file_count)
    cases = [
        ("unfiltered (snapshot body)", RUNNING),
        ("fileList=none&pageSize=50", f"{RUNNING}?fileList=none&pageSize=50"),
        ("pageSize=50 (full file lists)", f"{RUNNING}?pageSize=50"),
        ("fileList=summary&pageSize=50", f"{RUNNING}?fileList=summary&pageSize=50"),
        ("fields=taskId,totalProgress&pageSize=1000", f"{RUNNING}?fields=taskId,totalProgress&pageSize=1000"),
        ("sort=-totalProgress&fileList=none&pageSize=50", f"{RUNNING}?sort=-totalProgress&fileList=none&pageSize=50"),
        ("clientId=<one>&fileList=none&pageSize=50", f"{RUNNING}?clientId={some_client}&fileList=none&pageSize=50"),
        ("stalled=true&fileList=none (unpaged)", f"{RUNNING}?stalled=true&fileList=none"),
        ("status=pending&fileList=none (unpaged)", f"{RUNNING}?status=pending&fileList=none"),
        (f"running/{{id}} ({big.file_count} files)", f"{RUNNING}/{big.task_id}"),
        ("running/{id}?fileList=summary", f"{RUNNING}/{big.task_id}?fileList=summary"),
        ("stats", f"{API}/stats"),
        ("finished", f"{API}/finished"),
    ]
    with httpx.Client(base_url=base_url, timeout=600) as http:
        # the app's state is only read between requests, when the server thread is idle
        return [(name, *measure(http, url, repeat, queries.forget)) for name, url in cases]


def report(rows: list[tuple[str, int, float, float]], repeat: int) -> None:
    _, base_size, base_cold, _ = rows[0]
    print(f"\nmedian of {repeat}; ratios against the unfiltered read of the same run\n")
    header = (
        f"{'query':48} {'bytes':>12} {'size ratio':>11} {'cold ms':>9} {'cached ms':>10} "
        f"{'cold/unf.':>10} {'cached/unf.':>12}"
    )
    print(header)
    print("-" * len(header))
    for name, size, cold, cached in rows:
        print(
            f"{name:48} {size:>12,} {size / base_size:>11.2e} {cold:>9.2f} {cached:>10.2f} "
            f"{cold / base_cold:>10.2e} {cached / base_cold:>12.2e}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--unrelated", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    main(args.tasks, args.unrelated, args.repeat)
