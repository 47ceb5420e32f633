"""python -m bench.memory [--tasks N] [--files LOW-HIGH] [--top K]: where a running task's bytes go (issue 17).

bench.million's workload (N task keys, default 200,000, 1-4 file entries each, and a fifth as many other keys) in
a redis-server of the bench's own, and `python -m service serve` (change_feed = "on") started on it twice:

- plain: its resident set once ready, against the running values' bytes (bench.million's memory figure, at a size
  that takes seconds rather than minutes), and again after one GET of the whole running list (a large body is
  joined as it is first sent, and kept), with the service's CPU for the GETs of the whole list after it;
- traced (tracemalloc, one frame, started before the service imports anything): once ready, after a full
  collection, the live allocations by source line, in bytes per running task, largest first.

The traced run is slower; its figures are sizes, not times. What to look at before and after changing how a task
is held.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import runpy
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.processes import ROOT, cpu_seconds, ready, rss_bytes, service_env, whole_list
from bench.table import Row, file_range, report
from bench.workload import large_keyspace
from service.devtools.embedded import RedisServerProcess, free_port

# GETs of the whole list after the first, whose service CPU is averaged (the body joined by then).
WARM_GETS = 5
# Once ready, the service is given this long before it is measured: the settle after the first scan has run.
SETTLE_SECONDS = 3.0


@dataclass(frozen=True)
class Site:
    """Live allocations made at one source line."""

    where: str  # file (relative to the repository when under it) and line
    size: int  # bytes
    count: int  # blocks


def sites(snapshot: tracemalloc.Snapshot, root: Path = ROOT) -> list[Site]:
    """A snapshot's live allocations by line, largest first."""
    out = []
    for stat in snapshot.statistics("lineno"):
        frame = stat.traceback[0]
        name = frame.filename
        if name.startswith(f"{root}/"):
            name = name[len(str(root)) + 1 :]
        name = name.rpartition("site-packages/")[2]  # a library's file by its package
        out.append(Site(f"{name}:{frame.lineno}", stat.size, stat.count))
    return out


def site_rows(found: Iterable[Site], running: int, top: int) -> list[Row]:
    """The `top` largest sites as rows: bytes per running task, and the share of everything traced."""
    found = list(found)
    total = sum(site.size for site in found) or 1
    rows = [
        Row(
            "traced",
            site.where,
            f"{site.size / max(running, 1):,.0f} B/task",
            f"{site.size / 2**20:,.1f} MiB",
            f"{site.size / total:.1%}",
            "—",
            None,
        )
        for site in found[:top]
    ]
    rest = sum(site.size for site in found[top:])
    rows.append(
        Row("traced", "everything traced", f"{total / max(running, 1):,.0f} B/task", f"{total / 2**20:,.1f} MiB",
            "100%", "—", None, f"{len(found) - top:,} other lines hold {rest / 2**20:,.1f} MiB")
    )  # fmt: skip
    return rows


def _start(url: str, dump: Path | None) -> tuple[subprocess.Popen[bytes], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE__")}
    env.update(service_env(url, change_feed="on", max_scan_time=600_000, cache_ttl=600))
    env["PYTHONPATH"] = str(ROOT)
    env["SERVICE__SERVER__LOG_LEVEL"] = "warning"
    port = free_port()
    args = [sys.executable, "-m", "bench.memory"]
    args += ["--traced-service", str(dump), "--"] if dump is not None else ["--plain-service", "--"]
    process = subprocess.Popen([*args, "serve", "--port", str(port)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 1800
    while not ready(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the service did not become ready (exit code {process.returncode})")
        time.sleep(0.05)
    time.sleep(SETTLE_SECONDS)
    return process, port


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _dumped(process: subprocess.Popen[bytes], dump: Path) -> tracemalloc.Snapshot:
    process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 600
    while not dump.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the traced service wrote no snapshot")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(dump))


def run(tasks: int, file_range: tuple[int, int], top: int) -> tuple[list[Row], str]:
    server = RedisServerProcess()
    try:
        summary = asyncio.run(large_keyspace(server.url, tasks, file_range))
        process, port = _start(server.url, None)
        try:
            rss = rss_bytes(process.pid)
            sent, first_get = whole_list(port)
            time.sleep(SETTLE_SECONDS)
            rss_whole = rss_bytes(process.pid)
            cpu = cpu_seconds(process.pid)
            gets = [whole_list(port)[1] for _ in range(WARM_GETS)]
            get_cpu = (cpu_seconds(process.pid) - cpu) / WARM_GETS
        finally:
            _stop(process)
        with tempfile.TemporaryDirectory() as scratch:
            dump = Path(scratch) / "snapshot"
            process, _ = _start(server.url, dump)
            try:
                found = sites(_dumped(process, dump))
            finally:
                _stop(process)
    finally:
        server.close()
    running, values = summary.running_total, summary.running_value_bytes
    rows = [
        Row("plain", "service RSS once ready vs running values' bytes", f"{rss / 2**20:,.0f} MiB",
            f"{values / 2**20:,.1f} MiB", f"{rss / values:.2f}x", "<= 3x", rss <= 3 * values,
            f"{rss / running:,.0f} bytes of resident set per running task"),
        Row("plain", "the same after one GET of the whole list", f"{rss_whole / 2**20:,.0f} MiB",
            f"{values / 2**20:,.1f} MiB", f"{rss_whole / values:.2f}x", "—", None,
            f"{sent / 2**20:,.1f} MiB sent; its segments' chunks are kept once joined"),
        Row("plain", f"a whole-list GET once joined: service CPU, mean of {WARM_GETS}", f"{get_cpu * 1000:,.0f} ms",
            "—", "—", "—", None,
            f"{sent / 2**20:,.1f} MiB; the first GET took {first_get:.2f} s (joining), the next "
            f"{statistics.median(gets):.2f} s (median)"),
        *site_rows(found, running, top),
    ]  # fmt: skip
    header = (
        f"python -m bench.memory --tasks {tasks} --files {file_range[0]}-{file_range[1]}: {tasks:,} task keys "
        f"({running:,} running, {values / 2**20:,.1f} MiB of running values) + {tasks // 5:,} others"
    )
    return rows, header


def _serve(argv: list[str], dump: str | None) -> None:
    """`python -m service ARGV`, traced when `dump` is given: SIGUSR1 writes the live allocations there."""
    if dump is not None:
        tracemalloc.start(1)

        def write(_signal: int, _frame: object) -> None:
            gc.collect()
            partial = f"{dump}.part"
            tracemalloc.take_snapshot().dump(partial)
            os.replace(partial, dump)  # whole, or not there

        signal.signal(signal.SIGUSR1, write)
    sys.argv = ["service", *argv]
    runpy.run_module("service", run_name="__main__", alter_sys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument(
        "--files", default="1-4", help="file entries per task, LOW-HIGH (default 1-4, as bench.million)"
    )
    parser.add_argument("--top", type=int, default=20, help="source lines listed (default 20)")
    parser.add_argument("--output", help="also write the table as Markdown to this file")
    parser.add_argument("--traced-service", help=argparse.SUPPRESS)
    parser.add_argument("--plain-service", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.traced_service or args.plain_service:
        _serve([arg for arg in rest if arg != "--"], args.traced_service)
        return
    rows, header = run(args.tasks, file_range(args.files), args.top)
    report(rows, header, args.output)


if __name__ == "__main__":
    main()
