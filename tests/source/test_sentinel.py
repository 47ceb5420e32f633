"""Sentinel mode against real processes: a master, a replica and a Sentinel (`redis-server --sentinel`). The
service finds the master through the Sentinel; when the master is killed it serves its last snapshot meanwhile,
and follows the replica the Sentinel promotes (reads and, with the change feed, announcements)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from service.devtools.embedded import free_port
from service.devtools.sentinel import MASTER_NAME, LocalSentinel
from service.http.app import create_app
from service.settings import SettingsError, settings_from_mapping
from tests.conftest import make_settings, require_binaries, running_app
from tests.source.test_tls import _certificates as certificates

pytestmark = [pytest.mark.real_redis, pytest.mark.anyio]
RUNNING = "/codebase-embedder/api/v1/tasks/running"
FAILOVER_WAIT = 30.0  # s: a Sentinel needs down-after (1 s) plus an election and the promotion


def value(progress: int) -> bytes:
    return orjson.dumps({"process": "processing", "totalProgress": progress, "fileList": None})


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    require_binaries("redis-server")
    setup = LocalSentinel(replicas=1, sentinels=1)
    yield setup
    setup.close()


def sentinel_settings(setup: LocalSentinel, **running_tasks: Any) -> Any:
    # the url's host is not used in sentinel mode: a name that resolves nowhere shows it
    redis_section = {"url": "redis://master.invalid/0", "mode": "sentinel", "sentinels": setup.addresses,
                     "master_name": MASTER_NAME}  # fmt: skip
    return make_settings(redis=redis_section, **running_tasks)


async def task_ids(http: httpx.AsyncClient) -> list[str]:
    answer = await http.get(RUNNING)
    assert answer.status_code == 200, answer.text
    return sorted(task["taskId"] for task in answer.json()["data"]["tasks"])


async def test_the_service_follows_the_master_the_sentinel_promotes(sentinel: LocalSentinel) -> None:
    with redis.Redis(port=sentinel.master.port) as master:
        for number in range(5):
            master.set(f"request:id:before-{number}", value(number), ex=3600)
        assert master.wait(1, 5000) == 1  # on the replica too
    app = create_app(sentinel_settings(sentinel, refresh_interval=0.2, redis_timeout=1000))
    async with running_app(app) as http:
        before = [f"before-{number}" for number in range(5)]
        assert await task_ids(http) == before
        old_port = sentinel.master_port()
        sentinel.master.kill()
        # while the Sentinel has not promoted the replica: the last snapshot, served as long as it is fresh
        failed_over_at = time.monotonic() + FAILOVER_WAIT
        served_meanwhile = 0
        while sentinel.master_port() == old_port:
            assert time.monotonic() < failed_over_at, "the Sentinel did not promote the replica"
            assert await task_ids(http) == before
            served_meanwhile += 1
            await asyncio.sleep(0.2)
        assert served_meanwhile > 0
        assert sentinel.master_port() == sentinel.replicas[0].port
        with redis.Redis(port=sentinel.master_port()) as new_master:
            new_master.set("request:id:after", value(50), ex=3600)
        deadline = time.monotonic() + FAILOVER_WAIT
        while "after" not in await task_ids(http):
            assert time.monotonic() < deadline, "the service did not follow the new master"
            await asyncio.sleep(0.2)
        assert await task_ids(http) == sorted([*before, "after"])
        stats = (await http.get("/codebase-embedder/api/v1/tasks/cache-stats")).json()["data"]
        assert stats["lastRefresh"]["error"] is None
        assert stats["redis"]["mode"] == "sentinel"
        assert [node["node"] for node in stats["redis"]["nodes"]] == [f"127.0.0.1:{sentinel.replicas[0].port}"]


async def test_an_unknown_master_name_is_said_in_one_line(sentinel: LocalSentinel) -> None:
    settings = make_settings(
        redis={
            "url": "redis://master.invalid/0",
            "mode": "sentinel",
            "sentinels": sentinel.addresses,
            "master_name": "no-such-master",
        },  # fmt: skip
        redis_timeout=1000,
    )
    async with running_app(create_app(settings)) as http:
        answer = await http.get(RUNNING)
        stats = (await http.get("/codebase-embedder/api/v1/tasks/cache-stats")).json()["data"]
    assert answer.status_code == 503
    error = stats["lastRefresh"]["error"]
    assert "redis.master_name" in error and "\n" not in error


async def test_sentinels_with_a_password_of_their_own() -> None:
    require_binaries("redis-server")
    setup = LocalSentinel(replicas=0, sentinels=1, sentinel_password="sentinel-s3cret")
    try:
        with redis.Redis(port=setup.master.port) as master:
            master.set("request:id:guarded", value(7), ex=3600)
        for password, expected in (("sentinel-s3cret", 200), ("", 503), ("wrong-password", 503)):
            redis_section = {"url": "redis://master.invalid/0", "mode": "sentinel", "sentinels": setup.addresses,
                             "master_name": MASTER_NAME, "sentinel_password": password}  # fmt: skip
            async with running_app(create_app(make_settings(redis=redis_section, redis_timeout=1000))) as http:
                answer = await http.get(RUNNING)
                stats = (await http.get("/codebase-embedder/api/v1/tasks/cache-stats")).json()["data"]
            assert answer.status_code == expected, (password, answer.text)
            if expected == 200:
                assert [task["taskId"] for task in answer.json()["data"]["tasks"]] == ["guarded"]
                assert stats["settings"]["redis"]["sentinel_password"] == "***"  # never shown
            else:  # one line naming the settings to look at
                error = stats["lastRefresh"]["error"]
                assert "redis.sentinel_password" in error and "\n" not in error, error
    finally:
        setup.close()


async def test_sentinels_and_master_over_tls(tmp_path: Path) -> None:
    require_binaries("redis-server", "openssl")
    certificates(tmp_path)
    files = {name: str(tmp_path / name) for name in ("server.crt", "server.key", "ca.crt", "client.crt", "client.key")}
    tls_port = free_port()
    master_tls = ("--tls-port", str(tls_port), "--tls-cert-file", files["server.crt"],
                  "--tls-key-file", files["server.key"], "--tls-ca-cert-file", files["ca.crt"])  # fmt: skip
    setup = LocalSentinel(
        replicas=0,
        extra_args=master_tls,
        tls_files=(files["server.crt"], files["server.key"], files["ca.crt"]),
        master_port=tls_port,
    )
    try:
        with redis.Redis(port=setup.master.port) as master:
            master.set("request:id:over-tls", value(3), ex=3600)
        redis_section = {"url": "rediss://master.invalid/0", "mode": "sentinel", "sentinels": setup.tls_addresses,
                         "master_name": MASTER_NAME, "tls_ca_cert_file": files["ca.crt"],
                         "tls_cert_file": files["client.crt"], "tls_key_file": files["client.key"]}  # fmt: skip
        async with running_app(create_app(make_settings(redis=redis_section, redis_timeout=2000))) as http:
            answer = await http.get(RUNNING)
            stats = (await http.get("/codebase-embedder/api/v1/tasks/cache-stats")).json()["data"]
        assert answer.status_code == 200, answer.text
        assert [task["taskId"] for task in answer.json()["data"]["tasks"]] == ["over-tls"]
        # the master was reached on its TLS port, as the Sentinel (itself asked over TLS) named it
        assert [node["node"] for node in stats["redis"]["nodes"]] == [f"127.0.0.1:{tls_port}"]
    finally:
        setup.close()


def test_sentinel_credentials_are_for_sentinel_mode_only() -> None:
    with pytest.raises(SettingsError, match=r"^redis.sentinel_password is set, but redis.mode = 'standalone'"):
        settings_from_mapping({"redis": {"sentinel_password": "x"}})
    with pytest.raises(SettingsError, match=r"^redis.sentinel_username = 'watcher': needs redis.sentinel_password"):
        settings_from_mapping(
            {
                "redis": {
                    "mode": "sentinel",
                    "sentinels": ["a:26379"],
                    "master_name": "t",
                    "sentinel_username": "watcher",
                }
            }
        )
    env = {"SERVICE__REDIS__MODE": "sentinel", "SERVICE__REDIS__SENTINELS": "a:26379",
           "SERVICE__REDIS__MASTER_NAME": "t", "SERVICE__REDIS__SENTINEL_PASSWORD": "from-env"}  # fmt: skip
    assert settings_from_mapping({}, env).redis.sentinel_password == "from-env"


def test_sentinel_mode_needs_sentinels_and_a_master_name() -> None:
    with pytest.raises(SettingsError, match=r"^redis.sentinels = \[\]: sentinel mode needs"):
        settings_from_mapping({"redis": {"mode": "sentinel", "master_name": "tasks"}})
    with pytest.raises(SettingsError, match=r"^redis.master_name = '': sentinel mode needs"):
        settings_from_mapping({"redis": {"mode": "sentinel", "sentinels": ["10.0.0.1:26379"]}})
    with pytest.raises(SettingsError, match=r"^redis.sentinels = \['10.0.0.1'\]: '10.0.0.1' is not host:port"):
        settings_from_mapping({"redis": {"mode": "sentinel", "sentinels": ["10.0.0.1"], "master_name": "tasks"}})
    env = {"SERVICE__REDIS__MODE": "sentinel", "SERVICE__REDIS__SENTINELS": "a:26379, b:26379",
           "SERVICE__REDIS__MASTER_NAME": "tasks"}  # fmt: skip
    settings = settings_from_mapping({}, env)
    assert settings.redis.sentinel_addresses() == [("a", 26379), ("b", 26379)]
    with pytest.raises(SettingsError, match=r"^redis.mode = 'ring': must be one of 'standalone', 'cluster'"):
        settings_from_mapping({}, {"SERVICE__REDIS__MODE": "ring"})
