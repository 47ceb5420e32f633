"""Cluster mode against a real Redis Cluster of three primaries (`redis-server --cluster-enabled yes`, joined by
`redis-cli --cluster create`): the same held-out expectations as a single server; the change feed on every
primary; a primary killed mid-scan and replaced by its replica; a slot migrated during a scan; a feed's lookup of
keys whose slot moved."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import orjson
import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from service.devtools.cluster import LocalCluster
from service.devtools.simulator import build_workload
from service.domain.tasks import Observation
from service.http.app import create_app
from service.settings import Settings
from service.source.clients import create_client
from service.source.cluster_source import ClusterSource
from service.source.redis_source import MISSING, NOT_HERE_VALUE, KeyMeta, ScanPage
from service.source.scanner import Scanner
from tests.conftest import make_settings, require_binaries, running_app
from tests.source.test_acl import COMMANDS as ACL_COMMANDS
from tests.source.test_acl import PASSWORD, USER, add_user

pytestmark = [pytest.mark.real_redis, pytest.mark.anyio]
API = "/codebase-embedder/api/v1/tasks"


def value(progress: int) -> bytes:
    return orjson.dumps({"process": "processing", "totalProgress": progress, "fileList": None})


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    require_binaries("redis-server", "redis-cli")
    local = LocalCluster(primaries=3)
    yield local
    local.close()


@pytest.fixture
def empty_cluster(cluster: LocalCluster) -> LocalCluster:
    for node in cluster.primaries():
        with redis.Redis(port=node.port) as client:
            client.flushall()
    return cluster


def cluster_settings(url: str, **running_tasks: Any) -> Settings:
    return make_settings(redis={"url": url, "mode": "cluster"}, **running_tasks)


async def test_the_same_answers_as_one_server(empty_cluster: LocalCluster, redis_url: str) -> None:
    now_ms = int(time.time() * 1000)
    answers = {}
    for name, settings in (("cluster", cluster_settings(empty_cluster.url)), ("server", make_settings(url=redis_url))):
        client = create_client(settings)
        summary = await build_workload(client, tasks=3000, unrelated=300, seed=7, now_ms=now_ms)
        await client.aclose()
        async with running_app(create_app(settings)) as http:
            body = (await http.get(f"{API}/running")).json()["data"]
            stats = (await http.get(f"{API}/cache-stats")).json()["data"]
        answers[name] = (body, stats)
    (body, stats), (one_body, one_stats) = answers["cluster"], answers["server"]
    ids = [task["taskId"] for task in body["tasks"]]
    assert len(ids) == len(set(ids)) == summary.running_total  # every running task, once
    assert set(ids) == summary.running_ids
    assert set(ids) == {task["taskId"] for task in one_body["tasks"]}  # what one server answers
    last = stats["lastRefresh"]
    assert last["malformed"] == summary.malformed == one_stats["lastRefresh"]["malformed"]
    assert last["wrongType"] == one_stats["lastRefresh"]["wrongType"] > 0
    assert last["keysScanned"] == one_stats["lastRefresh"]["keysScanned"] == 3000
    assert last["duplicates"] == 0 and last["error"] is None
    nodes = stats["redis"]["nodes"]
    assert stats["redis"]["mode"] == "cluster" and len(nodes) == 3
    assert sum(node["keys"] for node in nodes) == 3000 and all(node["keys"] > 500 for node in nodes)
    assert all(node["errors"] == 0 for node in nodes)


async def test_the_change_feed_follows_every_primary(empty_cluster: LocalCluster) -> None:
    app = create_app(cluster_settings(empty_cluster.url, change_feed="on", refresh_interval=0.5))
    async with running_app(app) as http:
        assert (await http.get(f"{API}/running")).json()["data"]["totalTasks"] == 0
        full_scans = (await http.get(f"{API}/cache-stats")).json()["data"]["counters"]["refreshesOk"]
        with empty_cluster.client() as producer:
            keys = [f"request:id:feed-{number}" for number in range(30)]
            for number, key in enumerate(keys):
                producer.set(key, value(number), ex=3600)
            owners = {producer.get_node_from_key(key).name for key in keys}
        assert len(owners) == 3  # the writes landed on every primary
        deadline = time.monotonic() + 5
        while (await http.get(f"{API}/running")).json()["data"]["totalTasks"] < 30:
            assert time.monotonic() < deadline, "the feed did not announce every primary's writes"
            await asyncio.sleep(0.05)
        stats = (await http.get(f"{API}/cache-stats")).json()["data"]
    assert stats["changeFeed"]["state"] == "live" and stats["changeFeed"]["batches"] > 0
    assert stats["counters"]["refreshesOk"] == full_scans  # batches, not full scans


def _settings_for_scans(url: str) -> Settings:
    return cluster_settings(url, scan_batch_size=20, max_scan_time=60_000, worker_count=4)


def _write(cluster: LocalCluster, keys: list[str]) -> None:
    with cluster.client() as producer:
        pipe = producer.pipeline()
        for number, key in enumerate(keys):
            pipe.set(key, value(number % 100), ex=3600)
        pipe.execute()


def _found(observations: list[Observation]) -> Counter[str]:
    return Counter(observation.task.task_id for observation in observations)


def _migrate(cluster: LocalCluster, slot: int, target_port: int) -> None:
    """Move `slot` to the node at `target_port` as redis-cli --cluster reshard does: IMPORTING, MIGRATING,
    MIGRATE the keys, then NODE on every primary."""
    with redis.Redis(port=target_port) as target:
        target_id = target.cluster("myid")
        source_port = next(
            int(address.split(":")[1])
            for address, node in target.cluster("nodes").items()
            if "master" in node["flags"] and any(int(a) <= slot <= int(b) for a, b in _ranges(node["slots"]))
        )
    with redis.Redis(port=source_port) as source, redis.Redis(port=target_port) as target:
        source_id = source.cluster("myid")
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 50):
            source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
    for node in cluster.primaries():
        with redis.Redis(port=node.port) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def _ranges(slots: list[list[str]]) -> list[tuple[str, str]]:
    return [(pair[0], pair[-1]) for pair in slots]


async def test_a_slot_migrated_during_a_scan_loses_nothing_and_counts_nothing_twice(
    empty_cluster: LocalCluster,
) -> None:
    moving = [f"request:id:{{moving}}-{number}" for number in range(300)]  # one hash slot
    others = [f"request:id:still-{number}" for number in range(1500)]
    _write(empty_cluster, moving + others)
    client = create_client(_settings_for_scans(empty_cluster.url))
    assert isinstance(client, RedisCluster)
    slot = client.keyslot(moving[0])
    await client.initialize()
    owner = client.get_node_from_key(moving[0])
    target = next(node for node in empty_cluster.primaries() if node.port != int(owner.port))

    class MigratingMidScan(ClusterSource):
        async def scan_pages(self, pattern: str, count: int) -> AsyncGenerator[ScanPage, None]:
            pages = 0
            async for page in super().scan_pages(pattern, count):
                yield page
                pages += 1
                if pages == 3:  # the walks are under way: move the slot under them
                    await asyncio.to_thread(_migrate, empty_cluster, slot, target.port)

    settings = _settings_for_scans(empty_cluster.url)
    source = MigratingMidScan(client, fetch_max_bytes=settings.running_tasks.fetch_max_bytes, max_connections=8)
    found: list[Observation] = []
    try:
        stats = await Scanner(source, settings.running_tasks).scan(found.extend)
        assert source.rewalks >= 1
        counts = _found(found)
        assert set(counts) == {key.removeprefix("request:id:") for key in moving + others}
        assert max(counts.values()) == 1  # nothing twice
        assert stats.matched == len(moving) + len(others) and stats.duplicates > 0
        # the feed's lookups of the moved keys, with the client's slot map from before the move
        client.nodes_manager.slots_cache[slot] = [owner]
        page, values = await source.lookup([key.encode() for key in moving[:20]] + [b"request:id:gone"])
        assert page.expire_ats[-1] == MISSING and all(at > 0 for at in page.expire_ats[:-1])
        assert all(values[:-1]) and values[-1] is None
        # the scan's reads of the moved keys, with the slot map from before the move: each node's plain GETs say
        # MOVED, and those keys are read again through the cluster client
        client.nodes_manager.slots_cache[slot] = [owner]
        metas = [KeyMeta(key.encode(), 0, 10, 0) for key in moving[:20] + others[:20]]
        assert all(await source.read(metas))
    finally:
        await source.aclose()
        await client.aclose()


async def test_plain_gets_on_a_node_tell_keys_it_does_not_serve(empty_cluster: LocalCluster) -> None:
    client = create_client(cluster_settings(empty_cluster.url))
    assert isinstance(client, RedisCluster)
    source = ClusterSource(client, fetch_max_bytes=1 << 20, max_connections=4)
    try:
        await client.initialize()
        here, there = client.get_primaries()[:2]
        mine = next(f"request:id:{n}" for n in range(1000) if client.get_node_from_key(f"request:id:{n}") is here)
        theirs = next(f"request:id:{n}" for n in range(1000) if client.get_node_from_key(f"request:id:{n}") is there)
        listed = next(f"request:id:l{n}" for n in range(1000) if client.get_node_from_key(f"request:id:l{n}") is here)
        gone = next(f"request:id:g{n}" for n in range(1000) if client.get_node_from_key(f"request:id:g{n}") is here)
        await client.set(mine, value(5))
        await client.set(theirs, value(6))
        await client.rpush(listed, b"not a string")
        keys = [key.encode() for key in (mine, theirs, listed, gone)]
        assert await source.node_source(here).get_each(keys) == [value(5), NOT_HERE_VALUE, None, None]
        assert await source.node_source(here).get_each([keys[0]]) == [value(5)]  # the connection is still in step
    finally:
        await source.aclose()
        await client.aclose()


async def test_a_primary_killed_mid_scan_is_walked_again_on_its_replica() -> None:
    require_binaries("redis-server", "redis-cli")
    local = LocalCluster(primaries=3, replicas=1)
    try:
        keys = [f"request:id:failover-{number}" for number in range(3000)]
        _write(local, keys)
        for node in local.primaries():
            with redis.Redis(port=node.port) as client:
                assert client.wait(1, 5000) == 1  # the replica has them
        settings = _settings_for_scans(local.url)
        client = create_client(settings)
        assert isinstance(client, RedisCluster)
        await client.initialize()
        victim = local.node(int(client.get_primaries()[0].port))

        class KillingMidScan(ClusterSource):
            async def scan_pages(self, pattern: str, count: int) -> AsyncGenerator[ScanPage, None]:
                pages = 0
                async for page in super().scan_pages(pattern, count):
                    yield page
                    pages += 1
                    if pages == 5:
                        victim.kill()

        source = KillingMidScan(client, fetch_max_bytes=settings.running_tasks.fetch_max_bytes, max_connections=8)
        found: list[Observation] = []
        try:
            stats = await Scanner(source, settings.running_tasks).scan(found.extend)
            errors = {node.node: node.errors for node in source.nodes()}
        finally:
            await source.aclose()
            await client.aclose()
        counts = _found(found)
        assert set(counts) == {key.removeprefix("request:id:") for key in keys}
        assert max(counts.values()) == 1
        assert stats.matched == 3000
        assert source.failovers >= 1
        assert errors[f"127.0.0.1:{victim.port}"] > 0
    finally:
        local.close()


async def test_a_node_added_to_a_running_cluster_is_followed_and_scanned() -> None:
    require_binaries("redis-server", "redis-cli")
    local = LocalCluster(primaries=3)  # a cluster of its own: this test changes its shape
    try:
        settings = cluster_settings(local.url, change_feed="on", refresh_interval=0.5)
        async with running_app(create_app(settings)) as http:
            assert (await http.get(f"{API}/running")).json()["data"]["totalTasks"] == 0
            added = local.add_primary()
            keys = [f"request:id:added-{number}" for number in range(12)]
            for slot in sorted({key_slot(key.encode()) for key in keys}):
                _migrate(local, slot, added.port)
            # the feed notices the new primary (its topology check) and follows it; written only after that, these
            # keys can be seen within a batch only if it does
            deadline = time.monotonic() + 30
            while (await http.get(f"{API}/cache-stats")).json()["data"]["changeFeed"]["reconnects"] < 1:
                assert time.monotonic() < deadline, "the feed did not notice the new primary"
                await asyncio.sleep(0.1)
            while (await http.get(f"{API}/cache-stats")).json()["data"]["changeFeed"]["state"] != "live":
                assert time.monotonic() < deadline, "the feed is not live again"
                await asyncio.sleep(0.1)
            read_before = (await http.get(f"{API}/cache-stats")).json()["data"]["changeFeed"]["keysRead"]
            _write(local, keys)
            with local.client() as producer:
                assert {producer.get_node_from_key(key).port for key in keys} == {added.port}
            # announced by the new primary's feed: its batches read every one of them (a full scan may run too)
            while (stats := (await http.get(f"{API}/cache-stats")).json()["data"])["changeFeed"][
                "keysRead"
            ] < read_before + len(keys):
                assert time.monotonic() < deadline, "the new primary's writes were not announced"
                await asyncio.sleep(0.05)
            assert stats["changeFeed"]["state"] == "live"
            assert (await http.get(f"{API}/running")).json()["data"]["totalTasks"] == len(keys)
        # and a scan walks it: a service started now counts its keys under its name, none twice
        async with running_app(create_app(cluster_settings(local.url))) as http:
            stats = (await http.get(f"{API}/cache-stats")).json()["data"]
        nodes = {node["node"]: node for node in stats["redis"]["nodes"]}
        assert len(nodes) == 4 and nodes[f"127.0.0.1:{added.port}"]["keys"] == len(keys)
        assert stats["lastRefresh"]["matched"] == len(keys) and stats["lastRefresh"]["duplicates"] == 0
    finally:
        local.close()


# The README's ACL list for a cluster: the single server's (tests/source/test_acl.py) and what redis-py's cluster
# client asks of every node to learn the slots and the commands' keys.
CLUSTER_COMMANDS = f"{ACL_COMMANDS} +cluster|slots +cluster|nodes +command +eval"


async def test_an_acl_user_with_the_listed_commands_runs_on_a_cluster(empty_cluster: LocalCluster) -> None:
    for node in empty_cluster.primaries():
        add_user(node.port, CLUSTER_COMMANDS)
    with empty_cluster.client() as producer:
        for number in range(30):
            producer.set(f"request:id:acl-{number}", value(number), ex=3600)
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{empty_cluster.running()[0].port}/0"
    try:
        app = create_app(cluster_settings(url, change_feed="on", refresh_interval=0.5))
        async with running_app(app) as http:
            assert (await http.get(f"{API}/running")).json()["data"]["totalTasks"] == 30
            with empty_cluster.client() as producer:
                producer.set("request:id:acl-new", value(5), ex=3600)
            deadline = time.monotonic() + 10
            while (await http.get(f"{API}/running")).json()["data"]["totalTasks"] < 31:
                assert time.monotonic() < deadline, "the feed did not announce the write"
                await asyncio.sleep(0.05)
            stats = (await http.get(f"{API}/cache-stats")).json()["data"]
        assert stats["changeFeed"]["state"] == "live" and stats["lastRefresh"]["error"] is None
        denied = []
        for node in empty_cluster.primaries():  # what the user was denied, on any node: nothing
            with redis.Redis(port=node.port) as admin:
                denied += [entry for entry in admin.acl_log() if entry.get("username") == USER]
        assert denied == []
    finally:
        for node in empty_cluster.primaries():
            with redis.Redis(port=node.port) as admin:
                admin.acl_deluser(USER)
                admin.acl_log_reset()
