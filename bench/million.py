"""python -m bench.million [--tasks N]: the change feed's large-keyspace figures (issue 17), in one run.

1,000,000 task keys by default (no large task: the simulator's small and medium file lists) and a fifth as many
other keys, in a redis-server of the bench's own. In one run:

- the fetch floor: SCAN + one MGET per page, no decoding (bench.refresh.floor), the median of three;
- cold start: from starting `python -m service serve` (change_feed = "on") to its first 200 from /readyz;
- memory: the service's resident set once ready, against the bytes of the running tasks' values; again after the
  probe window, and after two GETs of the whole running list (its body joined as first sent, then kept);
- CPU: the service's own (user + system) while the producer writes, per value its change feed read;
- freshness: with a producer rewriting 1 % of the running tasks per second (as fast as it can, one at a time),
  probe writes and `GET /running/{taskId}` every 5 ms until each shows, p50/p99/max.

Timings are reported, never asserted; the targets are the issue's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import httpx
import redis.asyncio as aioredis

from bench import refresh, workload
from bench.feed import PROBE_TASKS, Window, _Based, _probe, _quantile
from bench.processes import LOAD_CPU, ROOT, SERVER_CPU, cpu_seconds, pin, ready, rss_bytes, service_env, whole_list
from bench.table import Row, file_range, report
from service.devtools.embedded import RedisServerProcess, free_port

# Long enough to hold a reconciliation scan (every reconcile_interval, 60 s by default, after the startup scan).
PROBE_SECONDS = 75.0


def _serve(url: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE__")}
    env.update(service_env(url, change_feed="on", max_scan_time=600_000, cache_ttl=600))
    env["PYTHONPATH"] = str(ROOT)
    env["SERVICE__SERVER__LOG_LEVEL"] = "warning"
    args = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    process = subprocess.Popen(args, env=env, cwd=ROOT)
    pin(process.pid, "server")
    return process


def _cpu_ticks(cpu: int) -> tuple[int, int]:
    """(busy, all) jiffies of one core so far (/proc/stat)."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(field) for field in line.split()[1:]]
                idle = ticks[3] + ticks[4]  # idle, iowait
                return sum(ticks) - idle, sum(ticks)
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def _busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


async def _latency_buckets(base: _Based) -> dict[float, float]:
    """The service's own histogram of a name's arrival to the snapshot holding its value: upper bound -> count."""
    text = (await base.get("/metrics")).text
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("running_tasks_change_feed_latency_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def _bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> str:
    """The bucket bound under which a fraction `q` of the window's names fell, as "<= N ms"."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    for bound, cumulative in counts.items():
        if total and cumulative >= q * total:
            return f"<= {bound * 1000:,.0f} ms" if bound != float("inf") else "> the largest bucket"
    return "no names"


async def run(tasks: int, file_range: tuple[int, int]) -> tuple[list[Row], str]:
    server = RedisServerProcess()
    try:
        url = server.url
        pin(server.pid, "load")
        started = time.perf_counter()
        summary = await workload.large_keyspace(url, tasks, file_range)
        built = time.perf_counter() - started
        floor = statistics.median(refresh.floor(url, workload.KEY_PATTERN, 100)[0] for _ in range(3))
        port = free_port()
        started = time.perf_counter()
        process = _serve(url, port)
        try:
            while not ready(port):
                if process.poll() is not None:
                    raise RuntimeError(f"the service exited with {process.returncode}")
                time.sleep(0.05)
            cold = time.perf_counter() - started
            rss = rss_bytes(process.pid)
            running = sorted(summary.running_ids)
            probe_ids, producer_ids = running[:PROBE_TASKS], frozenset(running[PROBE_TASKS:])
            out = Window()
            with workload.producer(url, producer_ids, 0.01) as rewritten:
                async with aioredis.Redis.from_url(url) as client, httpx.AsyncClient(timeout=30) as http:
                    base = _Based(http, f"http://127.0.0.1:{port}")
                    probes = []
                    stats_path = "/codebase-embedder/api/v1/tasks/cache-stats"
                    read_before = (await base.get(stats_path)).json()["data"]["changeFeed"]["keysRead"]
                    cpu_before = cpu_seconds(process.pid)
                    load_before = _cpu_ticks(LOAD_CPU)
                    latency_before = await _latency_buckets(base)
                    t0 = time.perf_counter()
                    number = 0
                    while time.perf_counter() - t0 < PROBE_SECONDS:
                        task_id = probe_ids[number % len(probe_ids)]
                        probes.append(asyncio.create_task(_probe(base, client, task_id, 1 + number % 98, out)))
                        number += 1
                        await asyncio.sleep(0.2)
                    await asyncio.gather(*probes)
                    window = time.perf_counter() - t0
                    produced = rewritten() / window
                    cpu = cpu_seconds(process.pid) - cpu_before
                    load_busy = _busy(load_before, _cpu_ticks(LOAD_CPU))
                    stats = (await base.get(stats_path)).json()["data"]
                    feed = stats["changeFeed"]
                    read = feed["keysRead"] - read_before
                    latency_after = await _latency_buckets(base)
            rss_after = rss_bytes(process.pid)
            # what a poller of the whole list costs: the body's segments joined as first sent, then kept
            whole = [whole_list(port) for _ in range(2)]
            rss_whole = rss_bytes(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        server.close()
    value_bytes = summary.running_value_bytes
    rows = [
        Row(
            "1M",
            "cold start to ready vs fetch floor",
            f"{cold:,.1f} s",
            f"{floor:,.1f} s",
            f"{cold / floor:.1f}x",
            "<= 4x",
            cold <= 4 * floor,
        ),  # fmt: skip
        Row(
            "1M",
            "service RSS once ready vs running values' bytes",
            f"{rss / 2**20:,.0f} MiB",
            f"{value_bytes / 2**20:,.0f} MiB",
            f"{rss / value_bytes:.1f}x",
            "<= 3x",
            rss <= 3 * value_bytes,
            f"after {PROBE_SECONDS:.0f} s of writes: {rss_after / 2**20:,.0f} MiB; after two GETs of the whole "
            f"list ({whole[0][0] / 2**20:,.0f} MiB; {whole[0][1]:.1f} s, then {whole[1][1]:.1f} s): "
            f"{rss_whole / 2**20:,.0f} MiB = {rss_whole / value_bytes:.1f}x",
        ),  # fmt: skip
    ]
    rows.append(
        Row(
            "1M",
            "service CPU while the producer writes",
            f"{cpu / window:.0%} of a core",
            "—",
            "—",
            "—",
            None,
            f"{cpu / max(read, 1) * 1e6:,.0f} µs of CPU per value the feed read ({read:,} values in {window:.0f} s); "
            f"the load core (Redis, the producer, the probes) {load_busy:.0%} busy meanwhile: near 100 %, the "
            "freshness figures are the load's, not the service's; the service's own histogram, a name's arrival "
            f"to the snapshot holding its value: p50 {_bucket_quantile(latency_before, latency_after, 0.5)}, p99 "
            f"{_bucket_quantile(latency_before, latency_after, 0.99)}",
        )  # fmt: skip
    )
    for label, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        value = _quantile(out.latencies, q)
        rows.append(
            Row(
                "1M",
                f"freshness, write to visible, {label}",
                f"{value * 1000:,.1f} ms",
                "—",
                "—",
                "< 100 ms" if label == "p99" else "—",
                (value < 0.1) if label == "p99" else None,
                (
                    f"{len(out.latencies)} probes, {out.unseen} unseen within 10 s; {feed['reconciliations']} "
                    f"reconciliation scan(s) meanwhile, {feed['missed']} change(s) missed"
                )
                if label == "p50"
                else "",
            )  # fmt: skip
        )
    header = (
        f"python -m bench.million --tasks {tasks} --files {file_range[0]}-{file_range[1]}: "
        f"{tasks:,} task keys ({summary.running_total:,} running, "
        f"{value_bytes / 2**20:,.0f} MiB of running values) + {tasks // 5:,} others, built in {built:.0f} s; "
        f"service pinned to cpu {SERVER_CPU}; the producer (a process of its own) rewrote {produced:,.0f} "
        "running tasks a second"
    )
    return rows, header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument(
        "--files",
        default="1-4",
        help="file entries per task, LOW-HIGH (default 1-4, the issue's workload; the simulator's usual is 5-50)",
    )
    parser.add_argument("--output", help="also write the table as Markdown to this file")
    args = parser.parse_args()
    rows, header = asyncio.run(run(args.tasks, file_range(args.files)))
    report(rows, header, args.output)


if __name__ == "__main__":
    main()
