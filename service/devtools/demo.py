"""`python -m service demo`: the service on an embedded Redis, fed by the producer simulator."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import signal
import socket
import sys
import time
from types import FrameType

import redis.asyncio as aioredis
import uvicorn
from redis.asyncio.cluster import RedisCluster

from service.devtools.cluster import LocalCluster
from service.devtools.embedded import EmbeddedRedis, start_embedded
from service.devtools.simulator import Simulator
from service.http.app import create_app
from service.http.routes import API_PREFIX
from service.settings import settings_from_mapping

KEY_TTL = 600  # s: short, so that nothing the demo wrote outlives it by long
STALL_AFTER = 30  # s: a stalled demo task shows its badge within half a minute...
STALL_HOLD = 90  # s: ...and is cleaned up a minute later, so that the list keeps about the tasks announced


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
        ("dashboard", f"{base}/"),
        ("running tasks", f"{base}{API_PREFIX}/running"),
        ("cache stats", f"{base}{API_PREFIX}/cache-stats"),
        ("health", f"{base}/healthz"),
        ("readiness", f"{base}/readyz"),
    ]


async def _demo(host: str, port: int, tasks: int, seed: int, redis: EmbeddedRedis, cluster: bool) -> None:
    mode = "cluster" if cluster else "standalone"
    settings = settings_from_mapping(
        {
            "redis": {"url": redis.url, "mode": mode},
            "server": {"host": host, "port": port, "log_level": "warning"},
            "running_tasks": {
                "refresh_interval": 1,
                "cache_ttl": 10,
                "producer_key_ttl": KEY_TTL,
                "stall_after": STALL_AFTER,
            },
        }
    )
    client = RedisCluster.from_url(redis.url) if cluster else aioredis.Redis.from_url(redis.url)
    simulator = Simulator(seed, key_ttl=KEY_TTL, newer_producer_fraction=0.25, stall_hold=STALL_HOLD)
    await simulator.write_anomalies(client)
    await simulator.tick(client, tasks=tasks, now_ms=int(time.time() * 1000))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning"))
    stop = asyncio.Event()
    producer = asyncio.create_task(
        simulator.run(client, tasks=tasks, interval=1.5, stop=stop, clock=lambda: int(time.time() * 1000))
    )
    # uvicorn shuts down gracefully on SIGTERM and Ctrl-C; a SIGHUP is made to do the same while it serves (an
    # exception raised by a handler inside the event loop would only be logged by asyncio)
    previous = signal.signal(signal.SIGHUP, server.handle_exit)
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        (_, dashboard), *others = urls(host, port)
        print(f"dashboard: {dashboard}")
        print(f"demo: embedded Redis ({redis.kind}) at {redis.url}, about {tasks} simulated tasks running")
        for name, url in others:
            print(f"  {name:<14} {url}")
        # the interpreter by its path: the command works as printed, whether or not the venv is activated
        scan = f"{shlex.quote(sys.executable)} -m service scan --redis-url {redis.url}"
        print(f"  {'from a shell':<14} {'SERVICE__REDIS__MODE=cluster ' if cluster else ''}{scan}")
        print("Ctrl-C (or SIGTERM, SIGHUP) stops everything.", flush=True)
    try:
        await serving
    finally:
        signal.signal(signal.SIGHUP, previous)
        stop.set()
        await producer
        await client.aclose()


class _Stop(Exception):
    """A SIGTERM or SIGHUP: stop as Ctrl-C does, Redis and its directory included."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_demo(*, host: str, port: int, tasks: int, seed: int, redis_kind: str, cluster: bool = False) -> int:
    """`cluster`: on a local cluster of three primaries (redis-server and redis-cli), in cluster mode."""
    if _port_taken(host, port):
        print(f"error: port {port} on {host} is in use; pick another with --port", file=sys.stderr)
        return 1
    if cluster and (shutil.which("redis-server") is None or shutil.which("redis-cli") is None):
        print(
            "error: --cluster needs redis-server and redis-cli (Debian: apt-get install redis-server)", file=sys.stderr
        )
        return 1
    if redis_kind == "redis-server" and shutil.which("redis-server") is None:
        print("error: redis-server is not installed; use --redis fakeredis (or auto)", file=sys.stderr)
        return 1
    # uvicorn answers SIGTERM (and Ctrl-C) with a graceful shutdown and then raises the signal again, which by
    # default would end the process before Redis is stopped; SIGHUP (a closed terminal) it does not handle at all.
    # Both become an exception, so that every way out goes through the `finally` below.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    redis: EmbeddedRedis | None = None
    try:
        try:
            redis = LocalCluster(primaries=3) if cluster else start_embedded(redis_kind)
        except ModuleNotFoundError:  # no redis-server, and fakeredis (the `demo` extra) is not installed
            print(
                "error: the demo needs redis-server (Debian: apt-get install redis-server) or the demo extra "
                "(pip install -e '.[demo]')",
                file=sys.stderr,
            )
            return 1
        # uvicorn handles Ctrl-C itself (a graceful shutdown), then re-raises it once it has stopped
        asyncio.run(_demo(host, port, tasks, seed, redis, cluster))
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # nothing interrupts the clean-up
            signal.signal(signum, signal.SIG_IGN)
        if redis is not None:
            redis.close()
    print("demo stopped.")
    return 0
