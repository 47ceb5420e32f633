"""Where the time of one refresh goes: cProfile of a cold, a warm and a 10 %-changed refresh of the workload.

python -m bench.profile [--tasks 100000] [--top 15]"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time

from bench import refresh, workload
from service.source.clients import create_client


async def _profile(tasks: int, top: int) -> str:
    loads = await workload.build(workload.Sizes(tasks, tasks))
    out = io.StringIO()
    try:
        settings = refresh.service_settings(loads.url(workload.FULL_DB))
        client = create_client(settings)
        refresher = refresh._refresher(client, settings)
        try:
            for label in ("cold", "warm", "10 % changed"):
                if label == "10 % changed":  # as the bench's figure: the producer rewrites 10 % of the running tasks
                    await workload.touch_running(loads.url(workload.FULL_DB), loads.full.running_ids, 0.10, seed=1)
                profiler = cProfile.Profile()
                started = time.perf_counter()
                profiler.enable()
                await refresher.refresh("profile")
                profiler.disable()
                elapsed = time.perf_counter() - started
                assert refresher.last_refresh is not None
                stats_line = refresher.last_refresh.stats
                out.write(f"\n== {label} refresh: {elapsed * 1000:,.0f} ms under the profiler; stats {stats_line}\n")
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("tottime").print_stats(top)
        finally:
            await client.aclose()
    finally:
        loads.server.close()
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(asyncio.run(_profile(args.tasks, args.top)))


if __name__ == "__main__":
    main()
