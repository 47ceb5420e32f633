"""The dashboard in Chromium at scale: `python -m bench.dashboard [--quick] [--screenshot FILE]`.

A redis-server of its own holds the running tasks (59,400 by default, a 20th per client id); the service runs as
the other benches run it; Debian's headless Chromium opens the dashboard while a producer rewrites 1 % of the
tasks per second, spread over each second. Measured in the page: the time from navigation to the first rows shown
with the whole list held, long tasks (> 50 ms, PerformanceObserver) per minute after that first render, the JS
heap at the start and at the end of the window, and the bytes the page received per minute (the DevTools
protocol's Network.dataReceived). Timings are reported, never asserted; the targets are the issue's.

`--screenshot FILE`: a few dozen moving demo tasks instead, and a picture of the page (docs/dashboard.png)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.events import Producer
from bench.processes import Server, service_env
from service.devtools.browser import chromium, missing
from service.devtools.embedded import RedisServerProcess
from service.devtools.simulator import KEY_PREFIX

_PROGRESS = re.compile(rb'"totalProgress":(\d+)')

# Put in the page before its own code runs (through the DevTools protocol: the page's CSP does not apply).
_OBSERVE = """
window.__long = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__long.push([entry.startTime, entry.duration]);
}).observe({ type: "longtask", buffered: true });
// what ran in each long frame: Long Animation Frames name the scripts (invoker, function, file) a long task does not
window.__frames = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    if (entry.duration <= 50) continue;
    const scripts = entry.scripts.map((s) => {
      const where = `${s.sourceFunctionName || "?"}@${(s.sourceURL || "").split("/").pop()}`;
      return `${s.invoker} ${where} ${Math.round(s.duration)} ms`;
    });
    window.__frames.push([entry.startTime, entry.duration, entry.blockingDuration, scripts.join("; ") || "no script"]);
  }
}).observe({ type: "long-animation-frame", buffered: true });
window.__firstRender = null;
(function wait() {
  const total = document.getElementById("total");
  const held = total ? total.textContent.replace(/\D/g, "") : "";
  if (document.querySelector("#rows tr") && held === String(window.__expected)) {
    window.__firstRender = performance.now();
  } else {
    requestAnimationFrame(wait);
  }
})();
"""


def _received(driver: Any) -> int:
    """Bytes the page received since the last call (the performance log is drained by reading it)."""
    total = 0
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.dataReceived":
            total += int(message["params"]["encodedDataLength"])
    return total


def _stream_bytes(base: str) -> int:
    """What the service has sent its event streams (the page's is the only one open): the page reads its stream in
    a worker, whose traffic is not in the page's network log."""
    with urllib.request.urlopen(base + "/codebase-embedder/api/v1/tasks/cache-stats", timeout=30) as answer:
        return int(json.load(answer)["data"]["streams"]["bytes"])


def _heap(driver: Any) -> int:
    usage = driver.execute_cdp_cmd("Runtime.getHeapUsage", {})
    return int(usage["usedSize"])


def _bar(driver: Any, task_id: str) -> int | None:
    value = driver.execute_script(
        "const tr = document.querySelector(`#rows tr[data-task-id='${arguments[0]}']`);"
        "return tr ? tr.querySelector('progress').value : null;",
        task_id,
    )
    return None if value is None else int(value)


def _write_to_bar(driver: Any, redis_url: str, probes: int = 20) -> list[float]:
    """A producer's write to one task on the page, then the page until its progress bar shows it: seconds each."""
    delays = []
    with redis.Redis.from_url(redis_url) as client:
        for _ in range(probes):
            task_id = driver.execute_script("return document.querySelector('#rows tr').dataset.taskId;")
            key = KEY_PREFIX + task_id
            value = client.get(key)
            if not isinstance(value, bytes):
                continue
            progress = (int(_PROGRESS.search(value).group(1)) + 50) % 100  # type: ignore[union-attr]
            written = time.perf_counter()
            client.set(key, _PROGRESS.sub(b'"totalProgress":%d' % progress, value, count=1), ex=3600)
            while _bar(driver, task_id) != progress:
                if time.perf_counter() - written > 10:
                    raise RuntimeError(f"a write to {task_id} not shown within 10 s")
                time.sleep(0.005)
            delays.append(time.perf_counter() - written)
            time.sleep(0.2)
    return delays


def _measure(base: str, redis_url: str, expected: int, seconds: float) -> dict[str, Any]:
    driver = chromium(performance_log=True)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument", {"source": f"window.__expected = {expected};" + _OBSERVE}
        )
        driver.get(base + "/")
        deadline = time.monotonic() + 120
        while (first := driver.execute_script("return window.__firstRender;")) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the page did not show every task within 120 s")
            time.sleep(0.05)
        before = _received(driver)
        heap_start = _heap(driver)
        streamed = _stream_bytes(base)  # the snapshot the page started from (and the few changes since)
        first_bytes = before + streamed
        started = time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - started
        received = _received(driver)
        streamed = _stream_bytes(base) - streamed
        heap_end = _heap(driver)
        long_tasks = driver.execute_script("return window.__long.filter(([start]) => start > arguments[0]);", first)
        frames = driver.execute_script("return window.__frames.filter(([start]) => start > arguments[0]);", first)
        shown = int(driver.execute_script("return document.querySelectorAll('#rows tr').length;"))
        delays = _write_to_bar(driver, redis_url)
        with urllib.request.urlopen(base + "/codebase-embedder/api/v1/tasks/cache-stats", timeout=30) as answer:
            streams = json.load(answer)["data"]["streams"]
        held = driver.execute_script("return document.getElementById('total').textContent;")
    finally:
        driver.quit()
    return {
        "first_render_ms": float(first),
        "first_bytes": float(first_bytes),
        "long_per_minute": len(long_tasks) * 60 / window,
        "longest_ms": max((duration for _, duration in long_tasks), default=0.0),
        "heap_start": float(heap_start),
        "heap_end": float(heap_end),
        "bytes_per_minute": (received + streamed) * 60 / window,
        "stream_per_minute": streamed * 60 / window,
        "frames": frames,
        "rows": float(shown),
        "held": float(held.replace(",", "")),
        "window": window,
        "delays": delays,
        "resets": streams["resets"],
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextlib.asynccontextmanager
async def _served(
    tasks: int, files: int, per_second: int, seconds: float, progress: Callable[[int], int] | None = None
) -> AsyncIterator[tuple[Server, str]]:
    """A redis-server of its own holding `tasks` running tasks, the service on it, and the producer rewriting
    `per_second` of them a second for at most `seconds`: the service and the Redis URL."""
    redis_server = RedisServerProcess()
    try:
        redis_server.start()
        client = aioredis.Redis.from_url(redis_server.url)
        producer = Producer(client, tasks, files=files)
        if progress is not None:
            for index, task in enumerate(producer.tasks):
                task.progress = progress(index)
        await producer.fill()
        server = Server(
            "bench.served:service_app", service_env(redis_server.url, cache_ttl=600, max_scan_time=120_000), "/readyz"
        )
        try:
            churn = asyncio.create_task(producer.churn(per_second, time.monotonic() + seconds))
            try:
                yield server, redis_server.url
            finally:
                churn.cancel()
                await asyncio.gather(churn, return_exceptions=True)
        finally:
            server.stop()
        await client.aclose()
    finally:
        redis_server.close()


async def run(tasks: int, seconds: float) -> str:
    async with _served(tasks, 5, max(1, tasks // 100), seconds + 180) as (server, redis_url):
        figures = await asyncio.to_thread(_measure, server.base, redis_url, tasks, seconds)
    rows = [
        ("time to first render (every task held)", f"{figures['first_render_ms']:,.0f} ms", "—"),
        ("bytes received for the first render", f"{figures['first_bytes'] / 1e6:,.2f} MB", "—"),
        (
            "long tasks (> 50 ms) per minute after it",
            f"{figures['long_per_minute']:,.1f} (longest {figures['longest_ms']:,.0f} ms)",
            "none",
        ),
        (
            f"JS heap, start -> after {figures['window'] / 60:,.1f} min",
            f"{figures['heap_start'] / 2**20:,.1f} -> {figures['heap_end'] / 2**20:,.1f} MiB",
            "bounded",
        ),
        (
            "a write to a task shown -> its progress bar moved, p50 / max",
            f"{_median(figures['delays']) * 1000:,.0f} / {max(figures['delays']) * 1000:,.0f} ms "
            f"({len(figures['delays'])} writes)",
            "within 1 s",
        ),
        (
            "bytes received per minute (the stream, as the service sent it, + the page's own calls)",
            f"{figures['bytes_per_minute'] / 1e6:,.2f} MB (stream {figures['stream_per_minute'] / 1e6:,.2f} MB)",
            "—",
        ),
        ("fresh snapshots the service sent the page after the first", f"{figures['resets']}", "—"),
        ("rows in the DOM / tasks held", f"{figures['rows']:,.0f} / {figures['held']:,.0f}", "—"),
    ]
    head = (
        f"python -m bench.dashboard: {tasks:,} running tasks, 1 % rewritten per second, one dashboard in headless "
        f"Chromium for {seconds:.0f} s after its first render\n\n| figure | value | target |\n|---|---|---|\n"
    )
    frames = "".join(
        f"\n- at {start / 1000:,.1f} s: {duration:,.0f} ms ({blocking:,.0f} ms blocking): {scripts}"
        for start, duration, blocking, scripts in figures["frames"]
    )
    table = head + "\n".join(f"| {' | '.join(row)} |" for row in rows)
    return table + (
        f"\n\nLong animation frames (> 50 ms) after the first render, with the scripts they ran:{frames}"
        if frames
        else ""
    )


async def screenshot(path: str) -> None:
    def shoot(base: str) -> None:
        driver = chromium(1400, 900)
        try:
            driver.get(base + "/")
            time.sleep(4)
            driver.save_screenshot(path)
        finally:
            driver.quit()

    async with _served(40, 12, 4, 60, progress=lambda index: (index * 37) % 100) as (server, _):
        await asyncio.to_thread(shoot, server.base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,940 tasks, 20 s")
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--screenshot", metavar="FILE", help="a picture of the page with demo data, then stop")
    args = parser.parse_args()
    absent = missing()
    if absent:
        raise SystemExit(f"bench.dashboard needs {', '.join(absent)} (Debian: chromium, chromium-driver)")
    if args.screenshot:
        asyncio.run(screenshot(args.screenshot))
        return
    tasks, seconds = (5_940, 20.0) if args.quick else (59_400, 300.0)
    print(asyncio.run(run(args.tasks or tasks, args.seconds or seconds)))


if __name__ == "__main__":
    main()
