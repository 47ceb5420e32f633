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
import bisect
import random
import time
from dataclasses import dataclass, field

import httpx
import redis.asyncio as aioredis

from bench.dashboards import Dashboards
from bench.processes import Server, cpu_seconds, service_env
from service.devtools.embedded import RedisServerProcess
from service.devtools.simulator import SimTask, Simulator

CLIENTS = [f"client-{i:02d}" for i in range(20)]
RUNNING = "/codebase-embedder/api/v1/tasks/running"
EVENTS = f"{RUNNING}/events"


@dataclass
class Window:
    seconds: float = 0.0
    cpu: float = 0.0
    bytes: int = 0
    delays: list[float] = field(default_factory=list)
    errors: int = 0
    polls_due: int = 0
    polls_answered: int = 0
    rss_per_stream: float = 0.0


class Producer:
    def __init__(self, client: aioredis.Redis, tasks: int, files: int) -> None:
        self.client = client
        self.sim = Simulator(1, files=files, stall_hold=None)
        self.tasks: list[SimTask] = []
        for index in range(tasks):
            task = self.sim.new_task(outcome="stall")
            task.process, task.client_id = "processing", CLIENTS[index % len(CLIENTS)]
            self.tasks.append(task)
        self.written: dict[str, list[float]] = {}  # task id -> when its writes were sent

    async def fill(self) -> None:
        await self.sim.write(self.client, self.tasks, int(time.time() * 1000))

    async def churn(self, per_second: int, until: float) -> None:
        """`per_second` rewrites a second, spread over it in steps of 20 ms as a busy embedder's writes arrive
        (a burst of them once a second made every event wait for one large batch)."""
        rng = random.Random(2)
        steps = 50
        while time.monotonic() < until:
            started = time.monotonic()
            batch = rng.sample(self.tasks, per_second)
            for step in range(steps):
                part = batch[step * per_second // steps : (step + 1) * per_second // steps]
                for task in part:
                    task.progress = (task.progress + 1) % 100
                now = int(time.time() * 1000)
                async with self.client.pipeline(transaction=False) as pipe:
                    for task in part:
                        pipe.set(task.key(), task.value(now), ex=3600)
                        self.written.setdefault(task.task_id, []).append(time.monotonic())
                    await pipe.execute()
                await asyncio.sleep(max(0.0, started + (step + 1) / steps - time.monotonic()))


def _delays(arrivals: list[tuple[str, float]], written: dict[str, list[float]]) -> list[float]:
    """For each event that carried a task, the time since that task's latest write before it arrived."""
    delays = []
    for task_id, arrived in arrivals:
        times = written.get(task_id)
        if times:
            place = bisect.bisect_right(times, arrived)
            if place:
                delays.append(arrived - times[place - 1])
    return delays


async def _window(server: Server, producer: Producer, dashboards: int, seconds: float, streams: bool) -> Window:
    """The dashboards in processes of their own (bench.dashboards): the bench measures the service, not itself."""
    window = Window()
    paths = [f"{EVENTS if streams else RUNNING}?fileList=none&clientId={CLIENTS[i % 20]}" for i in range(dashboards)]
    rss0 = server.rss_bytes()
    held = Dashboards(server.port, paths, streams)
    try:
        await asyncio.sleep(5)  # every dashboard connected and past its first answer
        opened = server.rss_bytes()
        producer.written.clear()
        held.start()
        cpu0, started = cpu_seconds(server.process.pid), time.monotonic()
        await producer.churn(max(1, len(producer.tasks) // 100), started + seconds)
        window.cpu, window.seconds = cpu_seconds(server.process.pid) - cpu0, time.monotonic() - started
    finally:
        received = held.stop()
    window.bytes, window.errors = received.bytes, received.errors
    window.polls_due, window.polls_answered = received.polls_due, received.polls_answered
    if streams:
        window.delays = _delays(received.arrivals, producer.written)
        window.rss_per_stream = (opened - rss0) / dashboards
    return window


async def _since_sizes(server: Server, producer: Producer) -> tuple[int, int]:
    async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
        full = await http.get(RUNNING)
        generation = full.headers["x-snapshot-generation"]
        await producer.churn(max(1, len(producer.tasks) // 100), time.monotonic() + 1.05)
        await asyncio.sleep(0.5)
        since = await http.get(RUNNING, params={"since": generation})
        return len(full.content), len(since.content)


def _per_poll(polled: Window, total: float) -> float:
    return total / max(polled.polls_answered, 1)


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
        # Per dashboard kept current for a minute: a stream's share of the window, against 60 answered polls (what a
        # 1 s poller needs). When the service cannot answer every poll due, the per-minute rows above are what a
        # saturated service managed; these are what serving the pollers' demand costs, measured per answer.
        (
            "bytes per dashboard-minute (pollers: 60 answered polls)",
            f"{streamed.bytes * per_min[0] / dashboards / 1e3:,.1f} kB",
            f"{polled.bytes / max(polled.polls_answered, 1) * 60 / 1e3:,.1f} kB",
            f"{_per_poll(polled, polled.bytes) * 60 / max(streamed.bytes * per_min[0] / dashboards, 1):,.1f}x fewer",
            ">= 10x fewer",
        ),
        (
            "service CPU per dashboard-minute (pollers: 60 answered polls)",
            f"{streamed.cpu * per_min[0] / dashboards * 1000:,.1f} ms",
            f"{_per_poll(polled, polled.cpu) * 60 * 1000:,.1f} ms",
            f"{_per_poll(polled, polled.cpu) * 60 / max(streamed.cpu * per_min[0] / dashboards, 1e-9):,.1f}x less",
            "less",
        ),
        (
            "polls answered of those due (one a second each)",
            "—",
            f"{polled.polls_answered:,} of {polled.polls_due:,}",
            f"{polled.polls_answered / max(polled.polls_due, 1):.0%}",
            "—",
        ),
        ("service memory per open stream", f"{streamed.rss_per_stream / 1024:,.1f} KiB", "—", "—", "—"),
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
        "The dashboards run in processes of their own (bench.dashboards).\n\n"
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
