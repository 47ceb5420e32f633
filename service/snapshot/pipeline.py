"""Redis client -> scanner -> tracker -> refresher, with the history the tracker feeds: the pipeline as the service
and the `scan` command both run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio.cluster import RedisCluster

from service.domain.history import History
from service.domain.tasks import task_id_prefix
from service.domain.tracker import Tracker
from service.settings import RunningTasksSettings, Settings
from service.snapshot.changes import ChangeLog
from service.snapshot.follower import Follower
from service.snapshot.refresher import Refresher
from service.snapshot.worker import RefreshLoop
from service.source.change_feed import ChangeFeed, Feed
from service.source.clients import RedisClient
from service.source.cluster_feed import ClusterFeed
from service.source.cluster_source import ClusterSource
from service.source.keysource import KeySource
from service.source.redis_source import RedisSource
from service.source.scanner import Scanner


@dataclass(frozen=True, slots=True)
class Pipeline:
    source: KeySource
    refresher: Refresher
    history: History
    follower: Follower
    changes: ChangeLog


def _source_and_feed(client: RedisClient, rt: RunningTasksSettings) -> tuple[KeySource, Callable[[], Feed]]:
    """A cluster is read node by node and followed on every primary; any other client is one server."""
    prefix = task_id_prefix(rt.key_pattern).encode()
    timeout = rt.redis_timeout / 1000
    if isinstance(client, RedisCluster):
        cluster = ClusterSource(client, fetch_max_bytes=rt.fetch_max_bytes, max_connections=rt.worker_count + 8)
        return cluster, lambda: ClusterFeed(cluster, prefix, timeout)
    return RedisSource(client, fetch_max_bytes=rt.fetch_max_bytes), lambda: ChangeFeed(client, prefix, timeout)


def build_pipeline(
    settings: Settings,
    client: RedisClient,
    clock: Callable[[], int] | None = None,
    loop: RefreshLoop | None = None,
) -> Pipeline:
    """`loop`: the refreshes' own loop (service.snapshot.worker); `client` is then used on that loop only."""
    rt = settings.running_tasks
    source, open_feed = _source_and_feed(client, rt)
    history = History(rt.history_size, clock)
    tracker = Tracker(rt.producer_key_ttl, stall_after=rt.stall_after, on_departures=history.record)
    scanner = Scanner(source, rt, clock, finished_sink=tracker.observe_finished)
    changes = ChangeLog(settings.events.held_generations, history.outcome)
    refresher = Refresher(scanner, tracker, rt, clock, loop, changes)
    follower = Follower(refresher, open_feed, rt, source.swapdb_calls)
    return Pipeline(source, refresher, history, follower, changes)
