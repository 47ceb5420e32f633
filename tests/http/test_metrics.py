"""Prometheus metrics: what each series says, labels that clients cannot multiply, and `promtool check metrics`
on the live output of an app over a real redis-server with simulated producer data."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

import fakeredis
import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client.parser import text_string_to_metric_families

from service.devtools.simulator import Simulator, build_workload
from service.http.app import create_app
from service.http.metrics import _RequestCollector
from service.settings import settings_from_mapping
from service.snapshot import refresher as refresher_module
from tests.conftest import make_settings, running_app

pytestmark = pytest.mark.anyio

RUNNING = "/codebase-embedder/api/v1/tasks/running"
STATS = "/codebase-embedder/api/v1/tasks/cache-stats"
TOKEN = "metrics-token-0123456789"
SCRAPE_TOKEN = "scrape-token-0123456789"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(data: Samples, name: str, **labels: str) -> float:
    return data[(name, frozenset(labels.items()))]


def producer_value(progress: int, process: str = "processing") -> bytes:
    return b'{"process":"%s","totalProgress":%d,"fileList":null}' % (process.encode(), progress)


async def test_requests_are_labelled_by_route_template_and_a_closed_set_of_methods() -> None:
    app = create_app(make_settings(), redis=fakeredis.FakeAsyncRedis())
    async with running_app(app) as http:
        await http.get(RUNNING)
        await http.get(RUNNING)
        for i in range(5):
            await http.get(f"/codebase-embedder/api/v1/tasks/random-{i}")
        await http.request("BREW", RUNNING)
        await http.post(STATS)
        data = samples((await http.get("/metrics")).text)
    assert value(data, "running_tasks_http_requests_total", route=RUNNING, method="GET", status="200") == 2
    assert value(data, "running_tasks_http_requests_total", route="unmatched", method="GET", status="404") == 5
    assert value(data, "running_tasks_http_requests_total", route=RUNNING, method="other", status="405") == 1
    assert value(data, "running_tasks_http_requests_total", route=STATS, method="POST", status="405") == 1
    count = "running_tasks_http_request_duration_seconds_count"
    assert value(data, count, route=RUNNING, method="GET", status="200") == 2
    routes = {dict(labels)["route"] for name, labels in data if name == "running_tasks_http_requests_total"}
    assert routes == {RUNNING, STATS, "unmatched"}  # no raw path ever became a label


async def test_the_route_label_is_the_openapi_path() -> None:
    app = create_app(make_settings(), redis=fakeredis.FakeAsyncRedis())
    async with running_app(app) as http:
        await http.get(f"{RUNNING}/some%2Ftask")  # 404: not running, but the route matched
        data = samples((await http.get("/metrics")).text)
        document = (await http.get("/openapi.json")).json()
    task_route = f"{RUNNING}/{{taskId}}"
    assert value(data, "running_tasks_http_requests_total", route=task_route, method="GET", status="404") == 1
    routes = {dict(labels)["route"] for name, labels in data if name == "running_tasks_http_requests_total"}
    assert routes <= set(document["paths"]) | {"unmatched"}


async def test_standard_collectors_and_no_created_series() -> None:
    app = create_app(make_settings(), redis=fakeredis.FakeAsyncRedis())
    async with running_app(app) as http:
        await http.get(RUNNING)
        text = (await http.get("/metrics")).text
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"python_gc_objects_collected", "python_gc_collections", "python_info", "process_cpu_seconds"} <= names
    assert "_created" not in text


async def test_renamed_gauges_keep_their_old_names_for_one_release() -> None:
    redis = fakeredis.FakeAsyncRedis()
    await redis.set("request:id:a", producer_value(10))
    app = create_app(make_settings(), redis=redis)
    async with running_app(app) as http:
        data = samples((await http.get("/metrics")).text)
    for status in ("processing", "pending"):
        assert value(data, "running_tasks_tasks", status=status) == value(data, "running_tasks_running", status=status)
    assert value(data, "running_tasks_running", status="processing") == 1
    assert value(data, "running_tasks_stalled") == value(data, "running_tasks_running_stalled") == 0


async def test_rejected_requests_keep_their_route_label() -> None:
    settings = settings_from_mapping(
        {"auth": {"tokens": [TOKEN]}, "rate_limit": {"requests_per_second": 0.1, "burst": 2}}
    )
    app = create_app(settings, redis=fakeredis.FakeAsyncRedis())
    async with running_app(app) as http:
        await http.get(STATS)  # 401, from the address's bucket
        await http.get(STATS)  # 401
        await http.get(STATS)  # 429
        data = samples((await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text)
    assert value(data, "running_tasks_http_requests_total", route=STATS, method="GET", status="401") == 2
    assert value(data, "running_tasks_http_requests_total", route=STATS, method="GET", status="429") == 1


async def test_refreshes_snapshot_and_last_scan() -> None:
    client = fakeredis.FakeAsyncRedis()
    await client.set("request:id:a", producer_value(10), ex=3600)
    await client.set("request:id:b", producer_value(50), ex=3600)
    await client.set("request:id:c", producer_value(0, "pending"), ex=3600)
    await client.set("request:id:d", producer_value(100, "completed"), ex=3600)
    await client.set("request:id:e", b"{not json")
    app = create_app(make_settings(refresh_interval=60), redis=client)
    async with running_app(app) as http:
        await app.state.refresher.run_job()
        first = (await http.get(RUNNING)).headers["etag"]
        await http.get(RUNNING, headers={"If-None-Match": first})
        data = samples((await http.get("/metrics")).text)
        snapshot = app.state.refresher.snapshot
    assert value(data, "running_tasks_refreshes_total", trigger="startup", outcome="ok") == 1
    assert value(data, "running_tasks_refreshes_total", trigger="job", outcome="ok") == 1
    assert value(data, "running_tasks_refreshes_total", trigger="job", outcome="timeout") == 0
    assert value(data, "running_tasks_refresh_duration_seconds_count", trigger="job", outcome="ok") == 1
    assert value(data, "running_tasks_snapshot_generation") == app.state.refresher.first_generation + 2
    assert value(data, "running_tasks_snapshot_fresh") == 1
    assert 0 <= value(data, "running_tasks_snapshot_age_seconds") < 60
    assert value(data, "running_tasks_snapshot_timestamp_seconds") == snapshot.built_ms / 1000
    assert value(data, "running_tasks_running", status="processing") == 2
    assert value(data, "running_tasks_running", status="pending") == 1
    assert value(data, "running_tasks_running", status="running") == 0  # every configured status has a series
    assert value(data, "running_tasks_last_scan_keys_scanned") == 5
    assert value(data, "running_tasks_last_scan_values_fetched") == 5
    assert value(data, "running_tasks_last_scan_values_malformed") == 1
    assert value(data, "running_tasks_last_scan_tasks_matched") == 3
    assert value(data, "running_tasks_last_scan_tasks_finished") == 1
    assert value(data, "running_tasks_last_scan_keys_expired") == 0
    assert value(data, "running_tasks_last_scan_duration_seconds") == snapshot.stats.duration_ms / 1000
    assert value(data, "running_tasks_last_refresh_success") == 1
    assert value(data, "running_tasks_served_total", source="snapshot") == 2
    assert value(data, "running_tasks_served_total", source="live_scan") == 0
    assert value(data, "running_tasks_not_modified_total") == 1
    assert value(data, "running_tasks_live_scans_total") == 0
    assert value(data, "running_tasks_scan_in_progress") == 0
    assert value(data, "running_tasks_build_info", version=__import__("service").__version__) == 1
    assert value(data, "process_cpu_seconds_total") > 0  # the process collector is there too


async def test_stalled_tasks_in_the_snapshot() -> None:
    now = [1_795_000_000_000]
    client = fakeredis.FakeAsyncRedis()

    async def write(task_id: str, progress: int, updated_ago_ms: int, process: str = "processing") -> None:
        value = {
            "process": process,
            "totalProgress": progress,
            "fileList": None,
            "lastUpdateTime": now[0] - updated_ago_ms,
        }
        await client.set(f"request:id:{task_id}", orjson.dumps(value))

    await write("old", 10, 10 * 60_000)  # unchanged for 10 minutes: stalled at first sight
    await write("fresh", 20, 0)
    await write("gone", 100, 60 * 60_000, "completed")  # finished: not running, so not stalled either
    app = create_app(make_settings(refresh_interval=60, stall_after=300), redis=client, clock=lambda: now[0])
    async with running_app(app) as http:
        first = samples((await http.get("/metrics")).text)
        now[0] += 6 * 60_000  # `fresh` has not changed for 6 minutes: stalled by time alone
        await app.state.refresher.run_job()
        second = samples((await http.get("/metrics")).text)
        await write("old", 11, 0)  # moves again
        await app.state.refresher.run_job()
        third = samples((await http.get("/metrics")).text)
        stats = (await http.get("/codebase-embedder/api/v1/tasks/stats")).json()["data"]
    assert [value(data, "running_tasks_running_stalled") for data in (first, second, third)] == [1, 2, 1]
    assert stats["running"]["stalled"] == 1  # the gauge and the stats endpoint count the same snapshot


async def test_failures_and_live_scans_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing(fakeredis.FakeAsyncRedis):
        error: Exception | None = None

        async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
            if self.error is not None:
                raise self.error
            return await super().evalsha(*args, **kwargs)

    client = Failing()
    await client.set("request:id:a", producer_value(10), ex=3600)
    app = create_app(make_settings(cache_enabled=False, max_scan_time=1000), redis=client)
    async with running_app(app) as http:
        assert (await http.get(RUNNING)).status_code == 200
        client.error = redis.exceptions.ConnectionError("refused")
        assert (await http.get(RUNNING)).status_code == 503
        monkeypatch.setattr(refresher_module, "_FAILURE_HOLD_SECONDS", 0.0)  # the next request tries again
        client.error = redis.exceptions.TimeoutError("slow")
        assert (await http.get(RUNNING)).status_code == 504
        data = samples((await http.get("/metrics")).text)
    assert value(data, "running_tasks_live_scans_total") == 3
    assert value(data, "running_tasks_refreshes_total", trigger="request", outcome="ok") == 1
    assert value(data, "running_tasks_refreshes_total", trigger="request", outcome="redis_unavailable") == 1
    assert value(data, "running_tasks_refreshes_total", trigger="request", outcome="timeout") == 1
    assert value(data, "running_tasks_redis_unavailable_total") == 1
    assert value(data, "running_tasks_scan_timeouts_total") == 1
    assert value(data, "running_tasks_last_refresh_success") == 0
    assert value(data, "running_tasks_served_total", source="live_scan") == 1
    assert value(data, "running_tasks_snapshot_generation") == app.state.refresher.first_generation + 1  # one scan


async def test_no_snapshot_yet() -> None:
    app = create_app(make_settings(cache_enabled=False), redis=fakeredis.FakeAsyncRedis())
    async with running_app(app) as http:
        data = samples((await http.get("/metrics")).text)
    assert value(data, "running_tasks_snapshot_generation") == 0
    assert value(data, "running_tasks_snapshot_fresh") == 0
    assert value(data, "running_tasks_running_stalled") == 0
    assert ("running_tasks_snapshot_age_seconds", frozenset()) not in data  # no age without a snapshot


async def test_each_app_has_its_own_registry_and_openmetrics_on_request() -> None:
    first = create_app(make_settings(), redis=fakeredis.FakeAsyncRedis())
    second = create_app(make_settings(), redis=fakeredis.FakeAsyncRedis())
    async with running_app(first) as http_first, running_app(second) as http_second:
        for _ in range(3):
            await http_first.get(RUNNING)
        plain = await http_second.get("/metrics")
        open_metrics = await http_second.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert plain.headers["content-type"].startswith("text/plain; version=")
    assert (
        "running_tasks_http_requests_total",
        frozenset({("route", RUNNING), ("method", "GET"), ("status", "200")}),
    ) not in samples(plain.text)
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")


# -- promtool ----------------------------------------------------------------------------------------------------


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (Debian: apt-get install prometheus; .ci/run does it)"
        if os.environ.get("REQUIRE_REAL_REDIS"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.real_redis
async def test_promtool_accepts_the_live_output(redis_url: str) -> None:
    promtool = _promtool()
    client = aioredis.Redis.from_url(redis_url)
    now = int(time.time() * 1000)
    await build_workload(client, tasks=200, unrelated=20, seed=3, large_files=200, now_ms=now)
    simulator = Simulator(seed=4, newer_producer_fraction=0.5)
    await simulator.write(client, [simulator.new_task() for _ in range(20)], now)
    await simulator.write_anomalies(client)
    await client.aclose()
    settings = settings_from_mapping(
        {
            "redis": {"url": redis_url},
            "auth": {"tokens": [TOKEN, SCRAPE_TOKEN]},  # each token has its own rate-limit bucket
            "rate_limit": {"requests_per_second": 1, "burst": 12},
            "running_tasks": {"refresh_interval": 0.2},
        }
    )
    app = create_app(settings)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_app(app) as http:
        etag = (await http.get(RUNNING, headers=auth)).headers["etag"]
        await http.get(RUNNING, headers={**auth, "If-None-Match": etag})  # 304
        await http.get(STATS, headers=auth)
        await http.get(RUNNING)  # 401
        await http.post(RUNNING, headers=auth)  # 405
        await http.get("/codebase-embedder/nope", headers=auth)  # 404
        await http.get("/healthz")
        await app.state.refresher.run_job()
        while (await http.get(STATS, headers=auth)).status_code != 429:  # use the bucket up
            pass
        response = await http.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert response.status_code == 200
    text = response.text
    data = samples(text)
    assert value(data, "running_tasks_http_requests_total", route=STATS, method="GET", status="429") == 1
    assert value(data, "running_tasks_last_scan_tasks_matched") > 0
    assert value(data, "running_tasks_running_stalled") > 0  # the workload has tasks whose TTL says they stopped
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stdout + checked.stderr


def test_request_durations_fall_in_the_buckets_prometheus_reads_as_le() -> None:
    collector = _RequestCollector()
    for seconds in (0.0005, 0.0004, 0.001, 0.0011, 20.0):
        collector.observe("/r", "GET", 200, seconds)
    requests, duration = collector.collect()
    assert [(s.name, s.value) for s in requests.samples] == [("running_tasks_http_requests_total", 5)]
    buckets = {s.labels["le"]: s.value for s in duration.samples if s.name.endswith("_bucket")}
    assert (buckets["0.0005"], buckets["0.001"], buckets["0.0025"], buckets["10.0"], buckets["+Inf"]) == (2, 3, 4, 4, 5)
    total = next(s.value for s in duration.samples if s.name.endswith("_sum"))
    assert total == pytest.approx(20.003)
