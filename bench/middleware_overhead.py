"""What the operations middleware costs a request served from the snapshot, and what a scrape costs.

Requests go straight into the ASGI app (no sockets, no HTTP client), so the numbers are the service's own
work. The baseline is the same app built without the operations middleware (Starlette's own error handling
kept), measured in the same run, interleaved; the result is a ratio and the microseconds added per request.

    .venv/bin/python bench/middleware_overhead.py [--tasks 1000] [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import fakeredis

from service.devtools.simulator import Simulator
from service.http.access_log import configure_logging
from service.http.app import create_app
from service.settings import settings_from_mapping

TOKEN = "bench-token-0123456789abcdef"
RUNNING = "/codebase-embedder/api/v1/tasks/running"


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _call(app: Any, scope: dict[str, Any]) -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


async def _rate(app: Any, path: str, headers: list[tuple[bytes, bytes]], count: int) -> float:
    scope = _scope(path, headers)
    assert await _call(app, scope) == 200
    started = time.perf_counter()
    for _ in range(count):
        await _call(app, scope)
    return (time.perf_counter() - started) / count


async def main(tasks: int, requests: int, rounds: int) -> None:
    client = fakeredis.FakeAsyncRedis()
    simulator = Simulator(seed=1)
    await simulator.write(client, [simulator.new_task() for _ in range(tasks)], int(time.time() * 1000))
    settings = settings_from_mapping(
        {
            "auth": {"tokens": [TOKEN]},
            "rate_limit": {"requests_per_second": 1e6, "burst": 1_000_000},
            "running_tasks": {"refresh_interval": 60},
        }
    )
    app = create_app(settings, redis=client)
    bare_app = create_app(settings, redis=client)
    bare_app.user_middleware.clear()  # before its first request builds the stack
    # logging as the Procfile sets it up: every request's access line is made and written (to /dev/null)
    configure_logging(settings, open(os.devnull, "w"))
    auth = [(b"authorization", f"Bearer {TOKEN}".encode())]
    async with app.router.lifespan_context(app), bare_app.router.lifespan_context(bare_app):
        bare, full, scrape = [], [], []
        for _ in range(rounds):  # interleaved, so that drift hits both sides alike
            bare.append(await _rate(bare_app, RUNNING, auth, requests))
            full.append(await _rate(app, RUNNING, auth, requests))
            scrape.append(await _rate(app, "/metrics", auth, max(1, requests // 100)))
    b, f, s = statistics.median(bare), statistics.median(full), statistics.median(scrape)
    snapshot = app.state.refresher.snapshot
    print(f"running list: {len(snapshot.tasks)} tasks, {len(snapshot.body):,} bytes per body")
    print(f"no ops middleware:      {b * 1e6:8.1f} us/request (baseline)")
    print(f"with every middleware:  {f * 1e6:8.1f} us/request  (x{f / b:.2f}, +{(f - b) * 1e6:.1f} us)")
    print(f"/metrics scrape:        {s * 1e6:8.1f} us/scrape   (x{s / b:.2f} of a baseline request)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.requests, args.rounds))
