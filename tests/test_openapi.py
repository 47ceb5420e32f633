"""The OpenAPI document: valid, in step with the routes and the access rules, and honoured by the running app
under a property-based fuzzer (schemathesis) against a real redis-server holding simulated producer data."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from starlette.routing import Route

from service import security
from service.app import create_app
from service.embedded import RedisServerProcess, free_port
from service.openapi import OPERATIONS, Access, build_document
from service.settings import Settings, settings_from_mapping
from service.simulator import Simulator, build_workload

TOKEN = "fuzz-token-0123456789abcdef"
FUZZ_SETTINGS: dict[str, Any] = {
    "auth": {"tokens": [TOKEN]},
    # on, so that 429 is part of the contract, but high enough that the fuzzer is not throttled
    "rate_limit": {"requests_per_second": 10_000, "burst": 10_000},
    "cors": {"allowed_origins": ["https://dash.example.com"]},
    "running_tasks": {"refresh_interval": 0.5},
}


def _template(route: Route) -> str:
    # Starlette writes `{name:converter}`; OpenAPI only `{name}`
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)


def test_document_is_valid_openapi() -> None:
    for raw in ({}, FUZZ_SETTINGS, {"rate_limit": {"requests_per_second": 0}}):
        validate(build_document(settings_from_mapping(raw)))


def test_every_route_is_described_and_every_description_is_a_route() -> None:
    app = create_app(settings_from_mapping(FUZZ_SETTINGS), redis=aioredis.Redis())
    routed = {
        (_template(route), method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or ())
        if method != "HEAD"  # Starlette answers HEAD wherever it answers GET
    }
    paths = build_document(app.state.settings)["paths"]
    described = {(path, method) for path, methods in paths.items() for method in methods}
    assert routed == described
    assert len(routed) >= 6


def test_access_levels_match_what_the_middleware_enforces() -> None:
    for op in OPERATIONS:
        assert (op.access is Access.PROBE) == (op.path in security.PROBE_PATHS), op.path
        assert (op.access is Access.PUBLIC) == (op.path in security.PUBLIC_PATHS), op.path


def test_document_follows_the_settings() -> None:
    open_doc = build_document(Settings())
    running = open_doc["paths"]["/codebase-embedder/api/v1/tasks/running"]["get"]
    assert running["security"] == []
    assert "401" not in running["responses"]
    assert "429" in running["responses"]  # the limit is on by default
    secured = build_document(settings_from_mapping(FUZZ_SETTINGS))["paths"]
    assert secured["/codebase-embedder/api/v1/tasks/running"]["get"]["security"] == [{"bearerAuth": []}]
    assert "401" in secured["/metrics"]["get"]["responses"]
    assert secured["/healthz"]["get"]["security"] == []
    assert "401" not in secured["/openapi.json"]["get"]["responses"]
    assert "429" not in secured["/readyz"]["get"]["responses"]  # probes are never limited
    unlimited = build_document(settings_from_mapping({"rate_limit": {"requests_per_second": 0}}))["paths"]
    assert all("429" not in op["responses"] for methods in unlimited.values() for op in methods.values())


@pytest.mark.anyio
async def test_served_document_is_the_built_one() -> None:
    app = create_app(settings_from_mapping(FUZZ_SETTINGS), redis=aioredis.Redis())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
        response = await http.get("/openapi.json")  # no token needed, and no lifespan: no Redis is touched
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == orjson.loads(orjson.dumps(build_document(app.state.settings)))


# -- the fuzzer ------------------------------------------------------------------------------------------------


class _Server:
    """The app under uvicorn on a free loopback port, in a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-fuzz", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


async def _fill(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        now = int(time.time() * 1000)
        await build_workload(client, tasks=300, unrelated=50, seed=6, large_fraction=0.01, large_files=300, now_ms=now)
        sim = Simulator(seed=7, newer_producer_fraction=0.5)
        await sim.write(client, [sim.new_task() for _ in range(30)], now)
        await sim.write_anomalies(client)
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def fuzz_base_url(redis_server: RedisServerProcess) -> Iterator[str]:
    redis_server.start()
    asyncio.run(_flush_and_fill(redis_server.url))
    with _Server(settings_from_mapping({**FUZZ_SETTINGS, "redis": {"url": redis_server.url}})) as base_url:
        yield base_url


async def _flush_and_fill(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    await client.aclose()
    await _fill(url)


schema = schemathesis.openapi.from_dict(build_document(settings_from_mapping(FUZZ_SETTINGS)))


@pytest.mark.real_redis
@schema.parametrize()
# bounded, and derandomized so that a CI run is reproducible; every run still sends about 500 requests
@settings(max_examples=50, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_fuzz_the_running_app(case: schemathesis.Case, fuzz_base_url: str) -> None:
    case.call_and_validate(base_url=fuzz_base_url, headers={"Authorization": f"Bearer {TOKEN}"})
