"""python -m bench.feed [--quick] [--output FILE.md]: the change feed against periodic scans (issue 17), one run.

Workload: bench.workload's keyspace (100,000 task keys + 100,000 unrelated; --quick: 6,000 + 6,000) in a
redis-server of the bench's own, and a producer rewriting 1 % of the running tasks per second, one at a time (GET,
SET EX), as the embedder does. Three modes, alternated round by round in the same minutes:

- producer only (no service): Redis' CPU without us, the baseline the others are measured against;
- the feed: the service with `change_feed = "on"` (full scans every `reconcile_interval`, 60 s);
- periodic: the service with `change_feed = "off"` (a full scan every `refresh_interval`, 2 s: today's default).

For each service mode:
- freshness: probe writes (SET EX of a new progress on a task the producer leaves alone), each followed by
  `GET /running/{taskId}` every 5 ms until the new progress shows: p50/p99/max from just before the SET to the
  first answer that shows it (the 5 ms polling adds up to 5 ms);
- Redis' CPU for the service: INFO CPU (user + sys) over the window, minus the producer-only mode's, per minute;
  and the commands the service sends per second (INFO commandstats: every command but the producer's GET and SET,
  and not counting the commands a script runs, which its EVALSHA covers).

Then four feed processes against the same Redis, against one periodic process. Timings are reported, never
asserted; targets are the issue's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import orjson
import redis.asyncio as aioredis

from bench import workload
from bench.processes import Server, pin, service_env
from bench.table import Row, report

TASK_PATH = "/codebase-embedder/api/v1/tasks/running/"
PRODUCER_COMMANDS = frozenset({"get", "set"})
# commands run by the service's scripts: counted in commandstats as well as in the EVALSHA that ran them
SCRIPT_INNER = frozenset({"scan", "time", "pexpiretime", "pttl", "strlen"})
PROBE_TASKS = 64
POLL_SECONDS = 0.005
# every probe writes a progress its task did not have (windows reuse the probe tasks: a value already there would
# show at once)
_PROBES = itertools.count()


@dataclass(frozen=True)
class Mode:
    sizes: workload.Sizes
    window: float  # s each mode is measured, per round
    rounds: int
    probe_every: float  # s between two probe writes


QUICK = Mode(workload.QUICK, window=8, rounds=1, probe_every=0.25)
FULL = Mode(workload.FULL, window=30, rounds=2, probe_every=0.2)


@dataclass
class Window:
    cpu_seconds: float = 0.0  # Redis' user + sys CPU over the window
    seconds: float = 0.0
    service_calls: int = 0  # commands the service sent (see module docstring)
    latencies: list[float] = field(default_factory=list)  # s, freshness probes
    unseen: int = 0  # probes whose write did not show within 10 s


async def _redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _service_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    total = 0
    for name, entry in stats.items():
        command = name.removeprefix("cmdstat_").split("|")[0]
        if command not in PRODUCER_COMMANDS and command not in SCRIPT_INNER and command != "info":
            total += int(entry["calls"])
    return total


async def _probe(http: _Based, client: aioredis.Redis, task_id: str, progress: int, out: Window) -> None:
    value = orjson.dumps({"process": "processing", "totalProgress": progress, "fileList": None})
    started = time.perf_counter()
    await client.set(f"request:id:{task_id}", value, ex=3600)
    deadline = started + 10
    while time.perf_counter() < deadline:
        response = await http.get(TASK_PATH + task_id)
        if response.status_code == 200 and response.json()["data"]["totalProgress"] == progress:
            out.latencies.append(time.perf_counter() - started)
            return
        await asyncio.sleep(POLL_SECONDS)
    out.unseen += 1


async def _measure(url: str, bases: list[str], probe_ids: list[str], mode: Mode, round_: int) -> Window:
    """One window: Redis' CPU and the service's commands; freshness probes against `bases` (none: producer only)."""
    out = Window()
    async with aioredis.Redis.from_url(url) as client, httpx.AsyncClient(timeout=30) as http:
        cpu0, calls0, t0 = await _redis_cpu(client), await _service_calls(client), time.perf_counter()
        probes: list[asyncio.Task[None]] = []
        index = 0
        while time.perf_counter() - t0 < mode.window:
            if bases:
                number = next(_PROBES)
                task_id = probe_ids[number % len(probe_ids)]
                progress = 1 + number % 98
                base = bases[index % len(bases)]
                probes.append(asyncio.create_task(_probe(_Based(http, base), client, task_id, progress, out)))
                index += 1
            await asyncio.sleep(mode.probe_every)
        await asyncio.gather(*probes)
        out.seconds = time.perf_counter() - t0
        out.cpu_seconds = await _redis_cpu(client) - cpu0
        out.service_calls = await _service_calls(client) - calls0
    return out


class _Based:
    """An httpx client bound to one service's base URL."""

    def __init__(self, http: httpx.AsyncClient, base: str) -> None:
        self._http, self._base = http, base

    async def get(self, path: str) -> httpx.Response:
        return await self._http.get(self._base + path)


BATCH_MS: int | None = None  # --batch-ms: the feed's change_batch_ms (None: the default)


@contextlib.contextmanager
def _services(url: str, count: int, feed: bool) -> Iterator[list[Server]]:
    extra = {"change_batch_ms": BATCH_MS} if feed and BATCH_MS is not None else {}
    env = service_env(url, change_feed="on" if feed else "off", max_scan_time=120_000, cache_ttl=600, **extra)
    servers: list[Server] = []
    try:
        for _ in range(count):
            servers.append(Server("bench.served:service_app", env, "/readyz"))
        yield servers
    finally:
        for server in servers:
            server.stop()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _merge(windows: list[Window]) -> Window:
    merged = Window()
    for w in windows:
        merged.cpu_seconds += w.cpu_seconds
        merged.seconds += w.seconds
        merged.service_calls += w.service_calls
        merged.latencies += w.latencies
        merged.unseen += w.unseen
    return merged


async def run(mode: Mode) -> list[Row]:
    loads = await workload.build(mode.sizes)
    try:
        url = loads.url(workload.FULL_DB)
        running = sorted(loads.full.running_ids)
        probe_ids, producer_ids = running[:PROBE_TASKS], frozenset(running[PROBE_TASKS:])
        pin(loads.server.pid, "load")
        results: dict[str, list[Window]] = {"none": [], "feed": [], "periodic": [], "feed x4": [], "periodic x1": []}
        with workload.producer(url, producer_ids, 0.01):
            for round_ in range(mode.rounds):
                results["none"].append(await _measure(url, [], probe_ids, mode, round_))
                for name, feed in (("feed", True), ("periodic", False)):
                    with _services(url, 1, feed) as servers:
                        results[name].append(await _measure(url, [s.base for s in servers], probe_ids, mode, round_))
            with _services(url, 4, True) as servers:
                results["feed x4"].append(await _measure(url, [s.base for s in servers], probe_ids, mode, 0))
            with _services(url, 1, False) as servers:
                results["periodic x1"].append(await _measure(url, [s.base for s in servers], probe_ids, mode, 0))
    finally:
        loads.server.close()
    return _rows(mode, {name: _merge(windows) for name, windows in results.items()})


def _rows(mode: Mode, w: dict[str, Window]) -> list[Row]:
    idle = w["none"].cpu_seconds / w["none"].seconds  # Redis CPU s per s with the producer alone
    per_minute = {name: max(win.cpu_seconds / win.seconds - idle, 0.0) * 60 for name, win in w.items()}
    rows: list[Row] = []
    feed, periodic = w["feed"], w["periodic"]
    for label, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        f, p = _quantile(feed.latencies, q), _quantile(periodic.latencies, q)
        target = "< 50 ms" if label == "p99" else ""
        rows.append(
            Row(
                "freshness",
                f"write to visible on running/{{taskId}}, {label}",
                _ms(f),
                _ms(p),
                f"{p / f:.0f}x sooner" if f > 0 else "—",
                target or "—",
                (f < 0.05) if label == "p99" else None,
                f"{len(feed.latencies)} probes with the feed, {len(periodic.latencies)} periodic; unseen within 10 s: "
                f"{feed.unseen} / {periodic.unseen}"
                if label == "p50"
                else "",
            )
        )
    f_cpu, p_cpu = per_minute["feed"], per_minute["periodic"]
    rows.append(
        Row(
            "redis cost",
            "Redis CPU for the service (INFO CPU, minus producer only), per minute",
            f"{f_cpu:.2f} s",
            f"{p_cpu:.2f} s",
            f"{p_cpu / f_cpu:.1f}x less" if f_cpu > 0 else "—",
            ">= 10x less",
            (f_cpu * 10 <= p_cpu) if f_cpu > 0 else True,
            f"producer alone: {idle * 60:.2f} s of Redis CPU per minute",
        )
    )
    f_calls, p_calls = feed.service_calls / feed.seconds, periodic.service_calls / periodic.seconds
    rows.append(
        Row(
            "redis cost",
            "commands the service sends, per second",
            f"{f_calls:,.1f}",
            f"{p_calls:,.1f}",
            f"{p_calls / f_calls:.1f}x fewer" if f_calls > 0 else "—",
            "—",
            None,
        )
    )
    x4, x1 = per_minute["feed x4"], per_minute["periodic x1"]
    rows.append(
        Row(
            "redis cost",
            "Redis CPU per minute: four feed processes vs one periodic",
            f"{x4:.2f} s",
            f"{x1:.2f} s",
            f"{x1 / x4:.1f}x less" if x4 > 0 else "—",
            "< one periodic",
            x4 < x1,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6,000 task keys and 8 s windows: a smoke run")
    parser.add_argument("--output", help="also write the table as Markdown to this file")
    parser.add_argument("--batch-ms", type=int, help="the feed's change_batch_ms (default: the setting's default)")
    args = parser.parse_args()
    global BATCH_MS
    BATCH_MS = args.batch_ms
    mode = QUICK if args.quick else FULL
    started = time.perf_counter()
    rows = asyncio.run(run(mode))
    header = (
        f"python -m bench.feed{' --quick' if args.quick else ''}"
        f"{f' --batch-ms {args.batch_ms}' if args.batch_ms is not None else ''}: {mode.sizes.tasks:,} task keys + "
        f"{mode.sizes.unrelated:,} others, 1 % of the running tasks rewritten per second, {mode.rounds} round(s) "
        f"of {mode.window:.0f} s per mode, {time.perf_counter() - started:.0f} s in all"
    )
    report(rows, header, args.output)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
