"""Shared fixtures: a real redis-server of the tests' own (free port, temporary directory), fakeredis, the app."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette

from service.devtools.embedded import RedisServerProcess, free_port
from service.settings import Settings, settings_from_mapping


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServerProcess]:
    """One real redis-server for the session. Missing binary: skip, unless REQUIRE_REAL_REDIS is set (CI)."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("REQUIRE_REAL_REDIS"):
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServerProcess()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServerProcess) -> str:
    """The session's real Redis, running and empty."""
    redis_server.start()  # a test before may have stopped it
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


def require_binaries(*names: str) -> None:
    """Skip the test when one of `names` is not on the PATH, unless REQUIRE_REAL_REDIS is set (CI): then fail."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (Debian: apt-get install redis-server redis-tools openssl)"
        if os.environ.get("REQUIRE_REAL_REDIS"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def own_redis_server() -> Iterator[RedisServerProcess]:
    """A real redis-server for one test that kills, pauses or restarts it."""
    if shutil.which("redis-server") is None:
        if os.environ.get("REQUIRE_REAL_REDIS"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = RedisServerProcess()
    yield server
    server.close()


def make_settings(**running_tasks: Any) -> Settings:
    """Settings with `running_tasks` overrides, and `url` or a `redis` section (a dict) when given; without them the
    Redis URL is whatever client the test passes to create_app.
    `TEST_CHANGE_FEED` (auto, on, off) is the change feed's setting where a test does not choose: CI runs the suite
    with the default and again with `off` (the periodic scans alone)."""
    redis_section: dict[str, Any] = dict(running_tasks.pop("redis", {}))  # type: ignore[call-overload]
    if "url" in running_tasks:
        redis_section["url"] = running_tasks.pop("url")
    running_tasks.setdefault("change_feed", os.environ.get("TEST_CHANGE_FEED", "auto"))
    return settings_from_mapping({"running_tasks": running_tasks, "redis": redis_section})


@asynccontextmanager
async def running_app(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give an HTTP client talking to it in process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


def first_answer(process: subprocess.Popen[Any], url: str, timeout: float = 30.0, **get: Any) -> httpx.Response:
    """The first answer to `GET url` from the server `process` starts, once it listens; fails the test when the
    process exits first or `timeout` seconds pass. `get`: httpx.get's other arguments (headers...)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, **{"timeout": 2, **get})
        except httpx.TransportError:
            assert process.poll() is None, f"the server exited with {process.returncode} before it answered"
            assert time.monotonic() < deadline, f"the server did not answer {url} within {timeout} s"
            time.sleep(0.1)


ROOT = Path(__file__).resolve().parents[1]


def start_serve(redis_url: str, tmp_path: Path, settings_text: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`python -m service serve` on a free port with `settings_text` as its settings file and `redis_url` as its
    Redis, once /readyz answers: the process, its base URL and its log (stderr)."""
    settings = tmp_path / "settings.toml"
    settings.write_text(settings_text)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port), "--settings", str(settings)],
            cwd=ROOT,
            env={**os.environ, "REDIS_URL": redis_url},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    first_answer(process, base + "/readyz")
    return process, base, log


def stop_serve(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as an operator stops it; killed after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
