"""Freshness under a poll flood: how often the snapshot is replaced while many connections poll the service, with
the refreshes on a loop of their own in a thread (the default) against the refreshes on the serving loop, in one
run on one keyspace (issue 15, item 5).

    python -m bench.flood                      # 10,000 task keys, 1,000 connections, 20 s per side, twice
    python -m bench.flood --tasks 100000 --connections 1000 --seconds 30

Each side: the service under uvicorn (pinned to one core, as in `python -m bench`), a producer rewriting 1 % of
the running tasks per second, wrk with N keep-alive connections polling the running list with the newest ETag
(304s, the cheapest answer: the most requests the loop must handle). Reported: snapshot generations per second
against what refresh_interval asks for, the poll rate, and the wall time of the refreshes done meanwhile."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

from bench import processes, workload
from bench.processes import Server, service_env
from service.devtools.embedded import RedisServerProcess
from service.devtools.simulator import build_workload

RUNNING = "/codebase-embedder/api/v1/tasks/running"
STATS = "/codebase-embedder/api/v1/tasks/cache-stats"


def _generation(server: Server) -> tuple[int, dict[str, Any]]:
    data = server.get_json(STATS)["data"]
    return data["snapshot"]["generation"], data


def one_side(url: str, ids: frozenset[str], threaded: bool, connections: int, seconds: float) -> dict[str, Any]:
    env = service_env(url, refresh_interval=1, refresh_thread=threaded, max_scan_time=60_000)
    with Server("bench.served:service_app", env, "/readyz") as server:
        time.sleep(2)  # past the first refreshes
        etag = server.get(RUNNING)[1]["etag"]
        with contextlib.ExitStack() as stack:
            stack.enter_context(workload.producer(url, ids, 0.01))
            first, before = _generation(server)
            started = time.monotonic()
            load = processes.closed_loop(server.url(RUNNING), seconds, connections, {"If-None-Match": etag})
            elapsed = time.monotonic() - started
            last, after = _generation(server)
    return {
        "generations_per_second": (last - first) / elapsed,
        "rps": load.rps,
        "errors": load.errors,
        "refreshes": after["counters"]["refreshesOk"] - before["counters"]["refreshesOk"],
        "failed": after["counters"]["refreshesFailed"] - before["counters"]["refreshesFailed"],
        "last_refresh_ms": after["lastRefresh"]["durationMs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    redis = RedisServerProcess()
    try:
        import redis.asyncio as aioredis

        async def build() -> frozenset[str]:
            client = aioredis.Redis.from_url(redis.url)
            try:
                summary = await build_workload(
                    client, tasks=args.tasks, unrelated=args.tasks, now_ms=int(time.time() * 1000)
                )
            finally:
                await client.aclose()
            return summary.running_ids

        ids = asyncio.run(build())
        print(
            f"python -m bench.flood: {args.tasks:,} task keys ({len(ids):,} running), {args.connections:,} "
            f"connections polling with the newest ETag, refresh_interval 1 s, {args.seconds:g} s per side"
        )
        print(f"{'side':34} {'generations/s':>14} {'polls/s':>10} {'errors':>7} {'refreshes':>10} {'last ms':>9}")
        for _ in range(args.rounds):  # alternated, so that drift hits both sides alike
            for threaded in (False, True):
                side = one_side(redis.url, ids, threaded, args.connections, args.seconds)
                name = "refresh thread (default)" if threaded else "refreshes on the serving loop"
                print(
                    f"{name:34} {side['generations_per_second']:>14.2f} {side['rps']:>10,.0f} {side['errors']:>7} "
                    f"{side['refreshes']:>5} ok {side['failed']:>2} failed {side['last_refresh_ms']:>6,.0f}",
                    flush=True,
                )
    finally:
        redis.close()


if __name__ == "__main__":
    main()
