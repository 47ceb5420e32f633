"""The event stream against ETag polling, in one run: `python -m bench.events [--quick]`.

A redis-server of its own holds the running tasks (a 20th of them per client id); a producer rewrites 1 % of them
per second. One window: N dashboards each hold a stream of one client's view (`fileList=none&clientId=...`); the
other: N dashboards each poll that view every second with If-None-Match. Both windows measure the service's CPU
(user + system, from /proc) and the bytes the dashboards received; the streams' window also the delay from a
producer's write to the event that carries it (an upper bound of swap -> event: it includes the change feed's
batch and read) and the service's memory per open stream. Last, the size of a `since=` answer one second old
against the full answer, at the same churn."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from dataclasses import dataclass, field

import httpx
import msgspec
import redis.asyncio as aioredis

from bench.processes import Server, service_env
from service.devtools.embedded import RedisServerProcess
from service.devtools.simulator import SimTask, Simulator

CLIENTS = [f"client-{i:02d}" for i in range(20)]
RUNNING = "/codebase-embedder/api/v1/tasks/running"
EVENTS = f"{RUNNING}/events"


class _Id(msgspec.Struct):
    taskId: str


class _Changes(msgspec.Struct):
    upserted: list[_Id]


@dataclass
class Window:
    seconds: float = 0.0
    cpu: float = 0.0
    bytes: int = 0
    delays: list[float] = field(default_factory=list)
    errors: int = 0


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        parts = stat.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


class Producer:
    def __init__(self, client: aioredis.Redis, tasks: int, files: int) -> None:
        self.client = client
        self.sim = Simulator(1, files=files, stall_hold=None)
        self.tasks: list[SimTask] = []
        for index in range(tasks):
            task = self.sim.new_task(outcome="stall")
            task.process, task.client_id = "processing", CLIENTS[index % len(CLIENTS)]
            self.tasks.append(task)
        self.written: dict[str, float] = {}  # task id -> when its last write was sent

    async def fill(self) -> None:
        await self.sim.write(self.client, self.tasks, int(time.time() * 1000))

    async def churn(self, per_second: int, until: float) -> None:
        rng = random.Random(2)
        while time.monotonic() < until:
            started = time.monotonic()
            batch = rng.sample(self.tasks, per_second)
            for task in batch:
                task.progress = (task.progress + 1) % 100
            now = int(time.time() * 1000)
            async with self.client.pipeline(transaction=False) as pipe:
                for task in batch:
                    pipe.set(task.key(), task.value(now), ex=3600)
                    self.written[task.task_id] = time.monotonic()
                await pipe.execute()
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


async def _stream(http: httpx.AsyncClient, url: str, window: Window, producer: Producer, stop: asyncio.Event) -> None:
    try:
        async with http.stream("GET", url) as response:
            kind = ""
            async for line in response.aiter_lines():
                window.bytes += len(line) + 1
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "changes":
                    received = time.monotonic()
                    for task in msgspec.json.decode(line[6:], type=_Changes).upserted:
                        written = producer.written.get(task.taskId)
                        if written is not None:
                            window.delays.append(received - written)
                if stop.is_set():
                    return
    except httpx.HTTPError:
        if not stop.is_set():
            window.errors += 1


async def _poll(http: httpx.AsyncClient, url: str, window: Window, stop: asyncio.Event) -> None:
    etag = ""
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = await http.get(url, headers={"If-None-Match": etag} if etag else {})
            window.bytes += len(response.content) + sum(len(k) + len(v) + 4 for k, v in response.headers.items())
            etag = response.headers.get("etag", etag)
        except httpx.HTTPError:
            window.errors += 1
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


async def _window(server: Server, producer: Producer, dashboards: int, seconds: float, streams: bool) -> Window:
    window = Window()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=dashboards + 10, max_keepalive_connections=dashboards + 10)
    async with httpx.AsyncClient(base_url=server.base, timeout=httpx.Timeout(30, read=None), limits=limits) as http:
        urls = [f"{EVENTS if streams else RUNNING}?fileList=none&clientId={CLIENTS[i % 20]}" for i in range(dashboards)]
        rss0 = server.rss_bytes()
        if streams:
            tasks = [asyncio.create_task(_stream(http, url, window, producer, stop)) for url in urls]
        else:
            tasks = [asyncio.create_task(_poll(http, url, window, stop)) for url in urls]
        await asyncio.sleep(3)  # every dashboard connected and past its first answer
        window.bytes, window.delays = 0, []
        opened = server.rss_bytes()
        cpu0, started = _cpu(server.process.pid), time.monotonic()
        await producer.churn(max(1, len(producer.tasks) // 100), started + seconds)
        window.cpu, window.seconds = _cpu(server.process.pid) - cpu0, time.monotonic() - started
        window.bytes = window.bytes  # (counted from the start of the window)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if streams:
            window.rss_per_stream = (opened - rss0) / dashboards  # type: ignore[attr-defined]
    return window


async def _since_sizes(server: Server, producer: Producer) -> tuple[int, int]:
    async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
        full = await http.get(RUNNING)
        generation = full.headers["x-snapshot-generation"]
        await producer.churn(max(1, len(producer.tasks) // 100), time.monotonic() + 1.05)
        await asyncio.sleep(0.5)
        since = await http.get(RUNNING, params={"since": generation})
        return len(full.content), len(since.content)


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


async def run(tasks: int, dashboards: int, seconds: float, files: int) -> str:
    redis_server = RedisServerProcess()
    try:
        redis_server.start()
        client = aioredis.Redis.from_url(redis_server.url)
        producer = Producer(client, tasks, files)
        await producer.fill()
        env = service_env(redis_server.url, cache_ttl=600, max_scan_time=120_000)
        env["SERVICE__EVENTS__MAX_STREAMS"] = str(dashboards + 10)
        server = Server("bench.served:service_app", env, "/readyz")
        try:
            streamed = await _window(server, producer, dashboards, seconds, streams=True)
            polled = await _window(server, producer, dashboards, seconds, streams=False)
            full, since = await _since_sizes(server, producer)
        finally:
            server.stop()
        await client.aclose()
    finally:
        redis_server.close()
    per_min = 60 / streamed.seconds, 60 / polled.seconds
    rows = [
        ("delay write -> event, p50", f"{_q(streamed.delays, 0.5) * 1000:,.1f} ms", "—", "—", "p99 < 100 ms"),
        ("delay write -> event, p99", f"{_q(streamed.delays, 0.99) * 1000:,.1f} ms", "—", "—", "< 100 ms"),
        (
            "bytes received per minute",
            f"{streamed.bytes * per_min[0] / 1e6:,.2f} MB",
            f"{polled.bytes * per_min[1] / 1e6:,.2f} MB",
            f"{polled.bytes * per_min[1] / max(streamed.bytes * per_min[0], 1):,.1f}x fewer",
            ">= 10x fewer",
        ),
        (
            "service CPU per minute",
            f"{streamed.cpu * per_min[0]:,.1f} s",
            f"{polled.cpu * per_min[1]:,.1f} s",
            f"{polled.cpu * per_min[1] / max(streamed.cpu * per_min[0], 1e-9):,.2f}x less",
            "less",
        ),
        ("service memory per open stream", f"{streamed.rss_per_stream / 1024:,.1f} KiB", "—", "—", "—"),  # type: ignore[attr-defined]
        (
            "since= answer (1 s of churn) vs full answer",
            f"{since:,} B",
            f"{full:,} B",
            f"{full / since:,.0f}x smaller",
            "—",
        ),
    ]
    head = (
        f"python -m bench.events: {tasks:,} running tasks, 1 % rewritten per second, {dashboards:,} dashboards "
        f"(one of 20 clientIds each, fileList=none), {seconds:.0f} s per window; errors: streams {streamed.errors}, "
        f"polls {polled.errors}; delays: {len(streamed.delays):,} events measured\n\n"
        "| figure | streams | ETag pollers (1 s) | ratio | target |\n|---|---|---|---|---|\n"
    )
    return head + "\n".join(f"| {' | '.join(row)} |" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, 100 dashboards, 20 s windows")
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--dashboards", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    tasks, dashboards, seconds = (2000, 100, 20.0) if args.quick else (59_400, 1000, 60.0)
    print(
        asyncio.run(
            run(
                args.tasks or tasks,
                args.dashboards or dashboards,
                args.seconds or seconds,
                files=3 if args.quick else 5,
            )
        )
    )


if __name__ == "__main__":
    main()
