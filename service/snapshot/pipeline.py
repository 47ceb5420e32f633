"""Redis client -> scanner -> tracker -> refresher, with the history the tracker feeds: the pipeline as the service
and the `scan` command both run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from service.domain.history import History
from service.domain.tasks import task_id_prefix
from service.domain.tracker import Tracker
from service.settings import Settings
from service.snapshot.changes import ChangeLog
from service.snapshot.follower import Follower
from service.snapshot.refresher import Refresher
from service.snapshot.worker import RefreshLoop
from service.source.change_feed import ChangeFeed
from service.source.redis_source import RedisSource
from service.source.scanner import Scanner


@dataclass(frozen=True, slots=True)
class Pipeline:
    source: RedisSource
    refresher: Refresher
    history: History
    follower: Follower
    changes: ChangeLog


def build_pipeline(
    settings: Settings,
    client: aioredis.Redis,
    clock: Callable[[], int] | None = None,
    loop: RefreshLoop | None = None,
) -> Pipeline:
    """`loop`: the refreshes' own loop (service.snapshot.worker); `client` is then used on that loop only."""
    rt = settings.running_tasks
    source = RedisSource(client, fetch_max_bytes=rt.fetch_max_bytes)
    history = History(rt.history_size, clock)
    tracker = Tracker(rt.producer_key_ttl, stall_after=rt.stall_after, on_departures=history.record)
    scanner = Scanner(source, rt, clock, finished_sink=tracker.observe_finished)
    changes = ChangeLog(settings.events.held_generations, history.outcome)
    refresher = Refresher(scanner, tracker, rt, clock, loop, changes)
    prefix = task_id_prefix(rt.key_pattern).encode()
    follower = Follower(refresher, lambda: ChangeFeed(client, prefix, rt.redis_timeout / 1000), rt, source.swapdb_calls)
    return Pipeline(source, refresher, history, follower, changes)
