"""The slow part of the fault suite (`pytest -m slow tests/faults`): a poll flood of 1,000 connections from one
address against the service as the Procfile runs it, on a real redis-server with a producer writing meanwhile.
Nothing refused or lost, the snapshot keeps being replaced, memory and file descriptors come back down."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from service.devtools.embedded import free_port
from service.devtools.simulator import Simulator
from tests.conftest import first_answer

ROOT = Path(__file__).resolve().parents[2]
RUNNING = "/codebase-embedder/api/v1/tasks/running"
STATS = "/codebase-embedder/api/v1/tasks/cache-stats"
pytestmark = [pytest.mark.slow, pytest.mark.real_redis]
CONNECTIONS = 1000
SECONDS = 20
KEEP_ALIVE = 5  # server.keep_alive_timeout's default


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_poll_flood_from_one_address_is_served_and_the_snapshot_stays_fresh(redis_url: str) -> None:
    async def seed() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            await Simulator(3).tick(client, tasks=200, now_ms=int(time.time() * 1000))

    asyncio.run(seed())
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PORT": str(port), "SERVICE__RUNNING_TASKS__REFRESH_INTERVAL": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # serve listens once its first snapshot is built: ready from its first answer
        assert first_answer(server, f"{base}/readyz").status_code == 200
        etag = httpx.get(f"{base}{RUNNING}").headers["etag"]
        before = httpx.get(f"{base}{STATS}").json()["data"]
        rss_before, fds_before = _rss_kib(server.pid), _fds(server.pid)
        producer = subprocess.Popen(
            [sys.executable, "-m", "service", "simulate", "--redis-url", redis_url, "--tasks", "200"]
            + ["--interval", "1", "--duration", str(SECONDS), "--seed", "3"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        load = subprocess.run(
            [sys.executable, "-m", "bench.loadgen", "closed", f"{base}{RUNNING}"]
            + ["--connections", str(CONNECTIONS), "--duration", str(SECONDS), "--header", f"If-None-Match: {etag}"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=SECONDS + 120,
        )
        producer.wait(timeout=60)
        assert load.returncode == 0, load.stderr
        result = json.loads(load.stdout)
        after = httpx.get(f"{base}{STATS}", timeout=30).json()["data"]
        time.sleep(KEEP_ALIVE + 1)  # the flood's idle connections are closed by server.keep_alive_timeout
        rss_after, fds_after = _rss_kib(server.pid), _fds(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    # every poll answered (a 304, or a 200 once the producer changed the list), none refused, none failed
    assert result["requests"] > CONNECTIONS
    assert result["errors"] == 0, result
    assert set(result["statuses"]) <= {"200", "304"}, result["statuses"]
    # the refreshes kept their pace under the flood: about one a second, none failed
    refreshes = after["counters"]["refreshesOk"] - before["counters"]["refreshesOk"]
    assert refreshes >= SECONDS // 2, (refreshes, result)
    assert after["counters"]["refreshesFailed"] == 0
    # what the flood took is given back: its connections closed, memory within a bound of where it was
    assert fds_after <= fds_before + 5, (fds_before, fds_after)
    assert rss_after < rss_before + 64 * 1024, (rss_before, rss_after)
