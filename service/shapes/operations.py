"""The shapes of the operations endpoints: cache-stats, health and readiness."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from service.shapes.common import Count, Time
from service.shapes.events import StreamsInfo


class SnapshotInfo(msgspec.Struct, rename="camel"):
    generation: Annotated[int, msgspec.Meta(ge=1)]
    built_at: Time
    age_seconds: Annotated[float, msgspec.Meta(ge=0)]
    ttl_seconds: float
    stale: bool
    task_count: Count
    etag: str
    body_bytes: Count


class LastRefresh(msgspec.Struct, rename="camel", kw_only=True):
    """The last refresh, and when it completed, what its scan counted (service.source.scanner.ScanStats)."""

    started_at: Time
    duration_ms: Annotated[float, msgspec.Meta(ge=0)]
    trigger: str  # job, startup, request (a live scan), cli
    error: str | None
    pages: Count | UnsetType = UNSET
    fetches: Count | UnsetType = UNSET
    keys_scanned: Count | UnsetType = UNSET
    duplicates: Count | UnsetType = UNSET
    values_fetched: Count | UnsetType = UNSET
    values_reused: Count | UnsetType = UNSET
    bytes_fetched: Count | UnsetType = UNSET
    decoded: Count | UnsetType = UNSET
    expired: Count | UnsetType = UNSET
    malformed: Count | UnsetType = UNSET
    wrong_type: Count | UnsetType = UNSET
    empty_id: Count | UnsetType = UNSET
    matched: Count | UnsetType = UNSET
    finished: Count | UnsetType = UNSET


class JobInfo(msgspec.Struct, rename="camel"):
    running: bool
    interval_seconds: float
    next_run: str | None


class ChangeFeedInfo(msgspec.Struct, rename="camel"):
    """The change feed (docs/operations.md, "The change feed")."""

    mode: Annotated[Literal["auto", "on", "off"], msgspec.Meta(description="the change_feed setting")]
    state: Annotated[
        Literal["off", "connecting", "live", "reconnecting", "fallback"],
        msgspec.Meta(description="live: snapshots follow Redis' announcements; otherwise periodic full scans"),
    ]
    reason: Annotated[str | None, msgspec.Meta(description="why the feed is not live, when it is not")]
    names_received: Count
    names_ignored: Annotated[Count, msgspec.Meta(description="names under the prefix that the pattern excludes")]
    null_announcements: Annotated[Count, msgspec.Meta(description="FLUSHALL, FLUSHDB: each a full scan")]
    swapdb_seen: Annotated[Count, msgspec.Meta(description="SWAPDB, which Redis does not announce: a full scan")]
    overflows: Annotated[Count, msgspec.Meta(description="times more names were pending than change_buffer")]
    batches: Count
    batch_failures: Count
    keys_read: Count
    departures: Annotated[Count, msgspec.Meta(description="tasks that left the running state through a batch")]
    reconnects: Count
    rescans: Annotated[Count, msgspec.Meta(description="full scans the feed asked for")]
    reconciliations: Annotated[Count, msgspec.Meta(description="reconciliation scans while the feed was live")]
    missed: Annotated[Count, msgspec.Meta(description="changes reconciliation scans found unannounced; 0 normally")]
    last_missed: Count
    pending: Annotated[Count, msgspec.Meta(description="names waiting for the next batch")]
    reconcile_interval_seconds: float
    batch_ms: int


class RedisNode(msgspec.Struct, rename="camel"):
    """One Redis node the scans walk (each primary of a cluster; the master of a Sentinel setup)."""

    node: Annotated[str, msgspec.Meta(description="host:port, or the socket's path")]
    pages: Annotated[Count, msgspec.Meta(description="SCAN replies of the last complete walk of this node")]
    keys: Annotated[Count, msgspec.Meta(description="keys they held (repeats included)")]
    duration_ms: Annotated[float, msgspec.Meta(ge=0, description="that walk, from its first call to its last reply")]
    errors: Annotated[Count, msgspec.Meta(description="calls to this node that failed, since the start")]


class RedisInfo(msgspec.Struct, rename="camel"):
    """The Redis topology ([redis] mode) and each node's share of the scans."""

    mode: Literal["standalone", "cluster", "sentinel"]
    nodes: list[RedisNode]
    rewalks: Annotated[Count, msgspec.Meta(description="cluster: scans walked again because slots moved meanwhile")]
    failovers: Annotated[Count, msgspec.Meta(description="cluster: primaries that failed mid-scan, walked again")]


class HistoryInfo(msgspec.Struct):
    kept: Count
    size: int
    version: Count


class QueryCacheInfo(msgspec.Struct, rename="camel"):
    """The LRU of rendered query answers (query_cache_size, query_cache_bytes) and the finished-task history."""

    entries: Count
    bytes: Count
    max_entries: Count
    max_bytes: Count
    hits: Count
    misses: Count
    evictions: Count
    history: HistoryInfo


class CacheStats(msgspec.Struct, rename="camel"):
    cache_enabled: bool
    snapshot: SnapshotInfo | None
    last_refresh: LastRefresh | None
    counters: dict[str, Count]
    job: JobInfo
    settings: Annotated[dict[str, Any], msgspec.Meta(description="the settings in effect; secrets shown as ***")]
    settings_file: Annotated[
        str | None, msgspec.Meta(description="the file the settings were read from; null: built-in defaults")
    ]
    query_cache: QueryCacheInfo
    change_feed: ChangeFeedInfo
    streams: StreamsInfo
    redis: RedisInfo


class Health(msgspec.Struct):
    status: Literal["ok"] = "ok"


class Ready(msgspec.Struct, kw_only=True):
    ready: Literal[True] = True
    reason: str
