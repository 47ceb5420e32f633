"""`python -m service demo`: the service on an embedded Redis, fed by the producer simulator."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import socket
import sys
import time

import redis.asyncio as aioredis
import uvicorn

from service.devtools.embedded import EmbeddedRedis, start_embedded
from service.devtools.simulator import Simulator
from service.http.app import create_app
from service.http.routes import API_PREFIX
from service.settings import settings_from_mapping

KEY_TTL = 600  # s: short, so that stalled demo tasks disappear within minutes


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def urls(host: str, port: int) -> list[tuple[str, str]]:
    base = f"http://{host}:{port}"
    return [
        ("running tasks", f"{base}{API_PREFIX}/running"),
        ("cache stats", f"{base}{API_PREFIX}/cache-stats"),
        ("health", f"{base}/healthz"),
        ("readiness", f"{base}/readyz"),
    ]


async def _demo(host: str, port: int, tasks: int, seed: int, redis: EmbeddedRedis) -> None:
    settings = settings_from_mapping(
        {
            "redis": {"url": redis.url},
            "server": {"host": host, "port": port, "log_level": "warning"},
            "running_tasks": {"refresh_interval": 1, "cache_ttl": 10, "producer_key_ttl": KEY_TTL},
        }
    )
    client = aioredis.Redis.from_url(redis.url)
    simulator = Simulator(seed, key_ttl=KEY_TTL, newer_producer_fraction=0.25)
    await simulator.write_anomalies(client)
    await simulator.tick(client, tasks=tasks, now_ms=int(time.time() * 1000))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning"))
    stop = asyncio.Event()
    producer = asyncio.create_task(
        simulator.run(client, tasks=tasks, interval=1.5, stop=stop, clock=lambda: int(time.time() * 1000))
    )
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        print(f"demo: embedded Redis ({redis.kind}) at {redis.url}, {tasks} simulated tasks moving")
        for name, url in urls(host, port):
            print(f"  {name:<14} {url}")
        # the interpreter by its path: the command works as printed, whether or not the venv is activated
        print(f"  {'from a shell':<14} {shlex.quote(sys.executable)} -m service scan --redis-url {redis.url}")
        print("Ctrl-C stops everything.", flush=True)
    try:
        await serving
    finally:
        stop.set()
        await producer
        await client.aclose()


def run_demo(*, host: str, port: int, tasks: int, seed: int, redis_kind: str) -> int:
    if _port_taken(host, port):
        print(f"error: port {port} on {host} is in use; pick another with --port", file=sys.stderr)
        return 1
    if redis_kind == "redis-server" and shutil.which("redis-server") is None:
        print("error: redis-server is not installed; use --redis fakeredis (or auto)", file=sys.stderr)
        return 1
    try:
        redis = start_embedded(redis_kind)
    except ModuleNotFoundError:  # no redis-server, and fakeredis (the `demo` extra) is not installed
        print(
            "error: the demo needs redis-server (Debian: apt-get install redis-server) or the demo extra "
            "(pip install -e '.[demo]')",
            file=sys.stderr,
        )
        return 1
    try:
        # uvicorn handles Ctrl-C itself (a graceful shutdown), then re-raises it once it has stopped
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_demo(host, port, tasks, seed, redis))
    finally:
        redis.close()
    print("demo stopped.")
    return 0
