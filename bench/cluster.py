"""Cluster mode against one server, in one run (issue 20): the same task keys on a local cluster of three primaries
and on one redis-server; the service's refresh (cold: every value read and decoded; warm: values unchanged) on
each, a cluster-aware SCAN+read floor, the four ways of reading values from a cluster (plain GETs sent at once on
each node's own connection, one script call per node, redis-py's pipeline of GETs per node, redis-py's MGET per hash
slot), and each Redis process's CPU time per refresh, as measured and less what the process spends with nobody
calling it (a cluster node's bus and cron), against the Redis CPU of the two floors.

    python -m bench.cluster                  # 100,000 task keys (about 5 minutes)
    python -m bench.cluster --tasks 20000    # a quicker look
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis

from bench import refresh
from bench.table import Row, render_markdown
from service.devtools.cluster import LocalCluster
from service.devtools.embedded import RedisServerProcess
from service.devtools.simulator import build_workload
from service.settings import Settings, settings_from_mapping
from service.snapshot.pipeline import build_pipeline
from service.source.clients import create_client
from service.source.cluster_source import ClusterSource, ReadMode

PATTERN = "request:id:*"
BATCH = 100  # scan_batch_size's default


def _settings(url: str, mode: str) -> Settings:
    return settings_from_mapping(
        {"redis": {"url": url, "mode": mode}, "running_tasks": {"max_scan_time": 600_000, "change_feed": "off"}}
    )


def _cpu(ports: list[int]) -> list[float]:
    """Each server's CPU seconds so far (user + system), from INFO cpu."""
    seconds = []
    for port in ports:
        with redis.Redis(port=port) as client:
            info = client.info("cpu")
            seconds.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return seconds


async def _measured(run: Callable[[], Awaitable[object]], ports: list[int]) -> tuple[float, list[float]]:
    """Wall seconds of `run`, and each server's CPU seconds during it."""
    before = _cpu(ports)
    started = time.perf_counter()
    await run()
    wall = time.perf_counter() - started
    return wall, [after - earlier for after, earlier in zip(_cpu(ports), before, strict=True)]


async def refreshes(
    url: str, mode: str, ports: list[int], reps: int, read_mode: ReadMode | None = None
) -> dict[str, Any]:
    """Cold then warm refreshes, `reps` times with a fresh service each time: median wall seconds and CPU."""
    settings = _settings(url, mode)
    cold: list[float] = []
    warm: list[float] = []
    cold_cpu: list[list[float]] = []
    warm_cpu: list[list[float]] = []
    running = 0
    for _ in range(reps):
        client = create_client(settings)
        pipeline = build_pipeline(settings, client)
        if read_mode is not None:
            assert isinstance(pipeline.source, ClusterSource)
            pipeline.source.read_mode = read_mode
        refresher = pipeline.refresher
        try:
            wall, cpu = await _measured(functools.partial(refresher.refresh, "bench"), ports)
            cold.append(wall)
            cold_cpu.append(cpu)
            for _ in range(2):
                wall, cpu = await _measured(functools.partial(refresher.refresh, "bench"), ports)
                warm.append(wall)
                warm_cpu.append(cpu)
            assert refresher.snapshot is not None
            running = len(refresher.snapshot.tasks)
        finally:
            await pipeline.source.aclose()
            await client.aclose()
        del pipeline
        gc.collect()
    return {
        "cold": statistics.median(cold),
        "warm": statistics.median(warm),
        "cold_cpu": [statistics.median(column) for column in zip(*cold_cpu, strict=True)],
        "warm_cpu": [statistics.median(column) for column in zip(*warm_cpu, strict=True)],
        "running": running,
    }


async def _node_floor(port: int, read: bool = True) -> None:
    client = aioredis.Redis(port=port)
    try:
        cursor = 0
        while True:
            cursor, keys = await client.scan(cursor=cursor, match=PATTERN, count=BATCH)
            if keys and read:
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.get(key)
                await pipe.execute(raise_on_error=False)
            if cursor == 0:
                return
    finally:
        await client.aclose()


async def floor(ports: list[int], reps: int, read: bool = True) -> tuple[float, list[float]]:
    """Cluster-aware SCAN+read floor: every primary at once, each SCAN page's values read by one pipeline of GETs on
    that node (MGET refuses keys of several slots); nothing decoded. Median wall seconds, and each primary's median
    CPU seconds. Without `read`, SCAN alone (on one server too: one port)."""
    times = []
    cpus = []
    for _ in range(reps):
        wall, cpu = await _measured(lambda: asyncio.gather(*(_node_floor(port, read) for port in ports)), ports)
        times.append(wall)
        cpus.append(cpu)
    return statistics.median(times), [statistics.median(column) for column in zip(*cpus, strict=True)]


def single_floor(url: str, port: int, reps: int) -> tuple[float, float]:
    """One server's SCAN+MGET floor (bench.refresh.floor): median wall seconds and the server's median CPU seconds."""
    times = []
    cpus = []
    for _ in range(reps):
        before = _cpu([port])[0]
        times.append(refresh.floor(url, PATTERN, BATCH)[0])
        cpus.append(_cpu([port])[0] - before)
    return statistics.median(times), statistics.median(cpus)


def idle_rates(ports: list[int], seconds: float = 5.0) -> list[float]:
    """Each server's CPU seconds per second with nobody calling it: a cluster node's own work (the cluster bus's
    pings, its cron), which a refresh's CPU delta includes but the refresh did not cause."""
    before = _cpu(ports)
    time.sleep(seconds)
    return [(after - earlier) / seconds for after, earlier in zip(_cpu(ports), before, strict=True)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


async def main(tasks: int, reps: int) -> None:
    cluster = LocalCluster(primaries=3)
    single = RedisServerProcess()
    try:
        now_ms = int(time.time() * 1000)
        built = time.perf_counter()
        for url, mode in ((cluster.url, "cluster"), (single.url, "standalone")):
            client = create_client(_settings(url, mode))
            summary = await build_workload(client, tasks=tasks, unrelated=tasks // 10, now_ms=now_ms)
            await client.aclose()
        print(f"workload: {tasks:,} task keys ({summary.running_total:,} running) on each, built in "
              f"{time.perf_counter() - built:.0f} s")  # fmt: skip
        primaries = [node.port for node in cluster.primaries()]
        one = await refreshes(single.url, "standalone", [single.port], reps)
        ours = await refreshes(cluster.url, "cluster", primaries, reps, "gets")
        scripted = await refreshes(cluster.url, "cluster", primaries, reps, "node")
        pipelined = await refreshes(cluster.url, "cluster", primaries, reps, "pipeline")
        by_slot = await refreshes(cluster.url, "cluster", primaries, reps, "mget")
        floor_s, floor_cpu = await floor(primaries, reps)
        _, scan_cpu = await floor(primaries, reps, read=False)
        _, (single_scan_cpu,) = await floor([single.port], reps, read=False)
        idle = idle_rates([*primaries, single.port])
        single_floor_s, single_floor_cpu = single_floor(single.url, single.port, reps)
        assert ours["running"] == one["running"] == summary.running_total
    finally:
        cluster.close()
        single.close()
    rows = [
        Row("20", "refresh, cold, 3 primaries vs one server", _ms(ours["cold"]), _ms(one["cold"]),
            f"{ours['cold'] / one['cold']:.2f}x", "<= 1.2x", ours["cold"] <= 1.2 * one["cold"]),
        Row("20", "refresh, warm, 3 primaries vs one server", _ms(ours["warm"]), _ms(one["warm"]),
            f"{ours['warm'] / one['warm']:.2f}x", "<= 1.2x", ours["warm"] <= 1.2 * one["warm"]),
        Row("20", "refresh, cold, vs cluster SCAN+read floor", _ms(ours["cold"]), _ms(floor_s),
            f"{ours['cold'] / floor_s:.2f}x", "<= 1.5x", ours["cold"] <= 1.5 * floor_s),
        Row("20", "refresh, warm, vs cluster SCAN+read floor", _ms(ours["warm"]), _ms(floor_s),
            f"{ours['warm'] / floor_s:.2f}x", "<= 1.5x", ours["warm"] <= 1.5 * floor_s),
        Row("20", "for scale: refresh, cold, one server vs its own SCAN+MGET floor", _ms(one["cold"]),
            _ms(single_floor_s), f"{one['cold'] / single_floor_s:.2f}x", "—", None),
    ]  # fmt: skip
    for name, figures in (("one script call per node", scripted), ("redis-py pipeline of GETs per node", pipelined),
                          ("redis-py MGET per hash slot", by_slot)):  # fmt: skip
        rows.append(
            Row("20", f"refresh, cold, reads: {name} vs plain GETs per node", _ms(figures["cold"]), _ms(ours["cold"]),
                f"{figures['cold'] / ours['cold']:.2f}x", "—", None)
        )  # fmt: skip
    rows += [
        Row("20", "Redis CPU of the SCAN+read floors: cluster (GETs per node), one primary vs one server (MGET)",
            _ms(max(floor_cpu)), _ms(single_floor_cpu), f"{max(floor_cpu) / single_floor_cpu:.2f}x", "—", None),
        Row("20", "Redis CPU of the SCAN+read floors: cluster, all primaries together vs one server",
            _ms(sum(floor_cpu)), _ms(single_floor_cpu), f"{sum(floor_cpu) / single_floor_cpu:.2f}x", "—", None),
        Row("20", "Redis CPU of plain SCAN (no value read): one primary vs one server",
            _ms(max(scan_cpu)), _ms(single_scan_cpu), f"{max(scan_cpu) / single_scan_cpu:.2f}x", "—", None),
        Row("20", "Redis CPU of plain SCAN (no value read): all primaries together vs one server",
            _ms(sum(scan_cpu)), _ms(single_scan_cpu), f"{sum(scan_cpu) / single_scan_cpu:.2f}x", "—", None),
    ]  # fmt: skip
    single_cpu = {"cold": one["cold_cpu"][0], "warm": one["warm_cpu"][0]}
    for kind in ("cold", "warm"):
        for port, cpu in zip(primaries, ours[f"{kind}_cpu"], strict=True):
            share = cpu / single_cpu[kind] if single_cpu[kind] else 0.0
            rows.append(
                Row("20", f"Redis CPU per {kind} refresh, primary :{port} vs one server", _ms(cpu),
                    _ms(single_cpu[kind]), f"{share:.2f}x", "about 0.33x", None)
            )  # fmt: skip
    # what all the primaries spend together, by way of reading values
    for name, figures in (("plain GETs per node", ours), ("one script call per node", scripted),
                          ("pipeline of GETs per node", pipelined), ("MGET per hash slot", by_slot)):  # fmt: skip
        total = sum(figures["cold_cpu"])
        rows.append(
            Row("20", f"Redis CPU per cold refresh, all primaries together, reads: {name}", _ms(total),
                _ms(single_cpu["cold"]), f"{total / single_cpu['cold']:.2f}x", "—", None)
        )  # fmt: skip
    # the same, less what each server spends idle over the refresh's duration
    single_idle = idle[-1]
    for kind in ("cold", "warm"):
        single_net = single_cpu[kind] - single_idle * one[kind]
        for port, cpu, rate in zip(primaries, ours[f"{kind}_cpu"], idle, strict=False):
            net = cpu - rate * ours[kind]
            share = net / single_net if single_net > 0 else 0.0
            rows.append(
                Row("20", f"Redis CPU per {kind} refresh less idle CPU, primary :{port} vs one server", _ms(net),
                    _ms(single_net), f"{share:.2f}x", "about 0.33x", None)
            )  # fmt: skip
    for port, rate in zip([*primaries, single.port], idle, strict=True):
        what = "one server" if port == single.port else f"primary :{port}"
        rows.append(
            Row("20", f"Redis CPU idle (nobody calling), {what}", f"{rate * 1000:,.1f} ms/s", "—", "—", "—", None)
        )
    print(render_markdown(rows, f"python -m bench.cluster --tasks {tasks} --reps {reps}"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="task keys on each topology (default 100,000)")
    parser.add_argument("--reps", type=int, default=3, help="fresh services per measurement (default 3)")
    options = parser.parse_args()
    asyncio.run(main(options.tasks, options.reps))
