"""Prometheus metrics: a registry per app, request metrics by route template, the refresher's state at scrape time.

Names share the `running_tasks_` prefix and follow Prometheus conventions (base units, `_total` counters).
Request metrics are labelled by the route *template* and a closed set of methods, never by the raw path or
method a client sends, so that no client can grow the number of series."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import asdict
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from service import __version__
from service.http.delivery import ServeCounters
from service.http.server import REFUSALS
from service.shapes.events import StreamsInfo
from service.snapshot.follower import LATENCY_BUCKETS, Follower
from service.snapshot.refresher import Refresher, RefreshRecord
from service.source.failures import Failure
from service.source.keysource import KeySource

PREFIX = "running_tasks_"
UNMATCHED = "unmatched"  # the route label of requests no route answers (404)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_OUTCOMES: dict[Failure | None, str] = {None: "ok", **{failure: failure.value for failure in Failure}}
# Served from the snapshot: well under a millisecond; a live scan: up to max_scan_time.
_REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The running tasks' gauges, and the names they had before 0.3.0, kept for one release (removed in 0.4.0).
_RUNNING_NAMES = (("running", ""), ("tasks", " Deprecated: the same as running_tasks_running; removed in 0.4.0."))
_STALLED_NAMES = (
    ("running_stalled", ""),
    ("stalled", " Deprecated: the same as running_tasks_running_stalled; removed in 0.4.0."),
)
# job: periodic; startup; request: a live scan; reconcile: the feed's periodic check; feed: asked for by the feed
_TRIGGERS = ("job", "startup", "request", "reconcile", "feed")
_FEED_STATES = ("off", "connecting", "live", "reconnecting", "fallback")
_REFRESH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The app's registry: request and refresh metrics observed as they happen, the rest read when scraped."""

    def __init__(
        self,
        refresher: Refresher,
        served: ServeCounters,
        running_statuses: Iterable[str],
        cache_ttl: float,
        follower: Follower | None = None,
        streams: Callable[[], StreamsInfo] | None = None,
        source: KeySource | None = None,
    ) -> None:
        # No `_created` series: prometheus-client would add them to its own counters and histograms but not to
        # the ones collected here, and no query of ours needs them. The switch is process-wide (the library
        # has no other); nothing else in the process exposes metrics.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the library has no hints on it
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = _RequestCollector()
        self.registry.register(self.requests)
        self.refresh_duration = Histogram(
            f"{PREFIX}refresh_duration_seconds",
            "Duration of snapshot refreshes (full scans), by trigger (job, startup, request, reconcile, feed) and "
            "outcome.",
            ["trigger", "outcome"],
            buckets=_REFRESH_BUCKETS,
            registry=self.registry,
        )
        self.refreshes = Counter(
            f"{PREFIX}refreshes",
            "Snapshot refreshes (full scans), by trigger (job, startup, request, reconcile, feed) and outcome (ok, "
            "timeout, redis_unavailable, error).",
            ["trigger", "outcome"],
            registry=self.registry,
        )
        self.live_scans = Counter(
            f"{PREFIX}live_scans",
            "Scans started by a request because the snapshot was missing or stale, or the cache is disabled.",
            registry=self.registry,
        )
        for trigger in _TRIGGERS:  # every series exists from the start, at zero
            for outcome in _OUTCOMES.values():
                self.refreshes.labels(trigger, outcome)
        self.state = _RefresherCollector(refresher, served, tuple(running_statuses), cache_ttl)
        self.registry.register(self.state)
        self.registry.register(_BuildInfo())
        if follower is not None:
            self.registry.register(_FeedCollector(follower))
        if streams is not None:
            self.registry.register(_StreamsCollector(streams))
        if source is not None:
            self.registry.register(_NodeCollector(source))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        refresher.listeners.append(self.observe_refresh)

    def observe_refresh(self, record: RefreshRecord, failure: Failure | None) -> None:
        outcome = _OUTCOMES[failure]
        self.refresh_duration.labels(record.trigger, outcome).observe(record.duration_ms / 1000)
        self.refreshes.labels(record.trigger, outcome).inc()
        if record.trigger == "request":
            self.live_scans.inc()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.observe(route, method if method in _METHODS else "other", status, seconds)

    def add_gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Expose `PREFIX + name` as a gauge whose value `read()` gives at each scrape."""
        self.state.extra.append((PREFIX + name, documentation, read))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format `accept` asks for (Prometheus text unless OpenMetrics is asked for)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _RequestCollector(Collector):
    """`http_requests_total` and `http_request_duration_seconds`, counted in plain lists: prometheus-client's
    labelled counter and histogram cost a sizeable part of what the service adds to a 304.
    Observed and collected on the event loop only, so without a lock."""

    def __init__(self) -> None:
        # (route, method, status) -> [count, sum of seconds, count per bucket (not cumulative), +Inf last]
        self._series: dict[tuple[str, str, int], list[Any]] = {}
        self._bounds = [repr(bound) for bound in _REQUEST_BUCKETS] + ["+Inf"]  # as prometheus-client writes `le`

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        entry = self._series.get(key)
        if entry is None:
            entry = self._series[key] = [0, 0.0, [0] * (len(_REQUEST_BUCKETS) + 1)]
        entry[0] += 1
        entry[1] += seconds
        entry[2][bisect_left(_REQUEST_BUCKETS, seconds)] += 1  # the first bound >= seconds: Prometheus' `le`

    def collect(self) -> Iterable[Metric]:
        labels = ["route", "method", "status"]
        requests = CounterMetricFamily(
            f"{PREFIX}http_requests",
            "HTTP requests answered, by route template, method and status code.",
            labels=labels,
        )
        duration = HistogramMetricFamily(
            f"{PREFIX}http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template, method and status code.",
            labels=labels,
        )
        for (route, method, status), (count, total, counts) in sorted(self._series.items()):
            values = [route, method, str(status)]
            requests.add_metric(values, count)
            duration.add_metric(values, list(zip(self._bounds, accumulate(counts), strict=True)), total)
        yield requests
        yield duration


class _FeedCollector(Collector):
    """The change feed's state and counters (service.snapshot.follower), read when Prometheus scrapes."""

    _COUNTERS = (
        ("names", "names", "Key names the change feed announced under the pattern."),
        ("null_announcements", "everything", "Null announcements (FLUSHALL, FLUSHDB): each a full scan."),
        ("swapdb", "swaps", "SWAPDB seen in INFO commandstats (not announced): each a full scan."),
        ("overflows", "overflows", "Times more names were pending than change_buffer holds: a full scan."),
        ("batches", "batches", "Batches of announced keys read and applied."),
        ("batch_failures", "batch_failures", "Batches whose reads failed: a full scan followed."),
        ("keys_read", "keys_read", "Values read by the change feed's batches."),
        ("departures", "departures", "Tasks that left the running state through a batch."),
        ("reconnects", "reconnects", "Times the change feed's connection was made again."),
        ("rescans", "rescans", "Full scans the change feed asked for."),
        ("reconciliations", "reconciliations", "Reconciliation scans while the change feed was live."),
        ("missed", "missed", "Changes reconciliation scans found that the feed had not announced (alert on it)."),
    )

    def __init__(self, follower: Follower) -> None:
        self._follower = follower

    def collect(self) -> Iterable[Metric]:
        follower = self._follower
        state = GaugeMetricFamily(
            f"{PREFIX}change_feed_state",
            "1 for the change feed's current state (live: snapshots follow Redis' announcements).",
            labels=["state"],
        )
        for name in _FEED_STATES:
            state.add_metric([name], 1 if follower.state == name else 0)
        yield state
        counters = follower.counters
        for name, attribute, documentation in self._COUNTERS:
            yield _counter(f"change_feed_{name}", documentation, getattr(counters, attribute))
        latency = HistogramMetricFamily(
            f"{PREFIX}change_feed_latency_seconds",
            "From a name's arrival to the installed snapshot that holds its value.",
        )
        bounds = [repr(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
        latency.add_metric(
            [], list(zip(bounds, accumulate(counters.latency_counts), strict=True)), counters.latency_sum
        )
        yield latency


class _StreamsCollector(Collector):
    """The event streams (service.http.streams), read at each scrape."""

    def __init__(self, read: Callable[[], StreamsInfo]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        info = self._read()
        yield _gauge("streams_open", "Event streams open now.", info.open)
        yield _gauge("stream_views", "Distinct views (filters + projection) the open streams watch.", info.views)
        yield _gauge("stream_views_shared", "Views watched by more than one open stream.", info.views_shared)
        yield _counter("streams_opened", "Event streams opened since start.", info.opened)
        yield _counter("streams_refused", "Event streams refused because max_streams were open.", info.refused)
        yield _counter("stream_events", "Events sent on the streams (snapshot and changes).", info.events)
        yield _counter("stream_bytes", "Bytes sent on the streams, heartbeats included.", info.bytes)
        yield _counter("stream_heartbeats", "Heartbeat comments sent on idle streams.", info.heartbeats)
        yield _counter("stream_resets", "Snapshots sent again: slow streams, resumes not held.", info.resets)
        yield _counter("stream_events_dropped", "Queued events discarded by those resets.", info.events_dropped)
        yield _counter("streams_dropped", "Streams the service ended (shutdown, a failed send).", info.dropped)
        yield _counter("stream_encodes", "Change events encoded (once per view and change).", info.encodes)


class _NodeCollector(Collector):
    """Each Redis node's share of the scans (every primary of a cluster), read when Prometheus scrapes."""

    def __init__(self, source: KeySource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        labels = ["node"]
        keys = GaugeMetricFamily(
            f"{PREFIX}redis_node_keys", "Keys the last complete SCAN of the node held.", labels=labels
        )
        duration = GaugeMetricFamily(
            f"{PREFIX}redis_node_scan_duration_seconds",
            "Duration of the last complete SCAN of the node.",
            labels=labels,
        )
        errors = CounterMetricFamily(f"{PREFIX}redis_node_errors", "Calls to the node that failed.", labels=labels)
        for node in self._source.nodes():
            keys.add_metric([node.node], node.keys)
            duration.add_metric([node.node], node.duration_ms / 1000)
            errors.add_metric([node.node], node.errors)
        yield keys
        yield duration
        yield errors
        yield _counter("redis_cluster_rewalks", "Cluster scans walked again because slots moved.", self._source.rewalks)
        yield _counter(
            "redis_cluster_failovers", "Cluster primaries that failed mid-scan, walked again.", self._source.failovers
        )


class _BuildInfo(Collector):
    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(f"{PREFIX}build_info", "Always 1; the service's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


class _RefresherCollector(Collector):
    """The snapshot, the last complete scan and the refresher's counters, read when Prometheus scrapes."""

    def __init__(
        self, refresher: Refresher, served: ServeCounters, running_statuses: tuple[str, ...], cache_ttl: float
    ) -> None:
        self._refresher = refresher
        self._served = served
        self._statuses = running_statuses
        self._ttl = cache_ttl
        self.extra: list[tuple[str, str, Callable[[], float]]] = []

    def collect(self) -> Iterable[Metric]:
        refresher = self._refresher
        snapshot = refresher.snapshot
        yield _gauge(
            "snapshot_generation",
            "Generation of the snapshot served (0: none yet).",
            0 if snapshot is None else snapshot.generation,
        )
        yield _gauge(
            "snapshot_fresh",
            "1 while the snapshot served is younger than cache_ttl, else 0 (requests then need a live scan).",
            1 if snapshot is not None and snapshot.is_fresh(self._ttl) else 0,
        )
        yield _gauge("scan_in_progress", "1 while a scan is running.", 1 if refresher.scanning else 0)
        counts = dict.fromkeys(self._statuses, 0)
        stalled = 0
        if snapshot is not None:
            for task in snapshot.tasks:
                counts[task.process] = counts.get(task.process, 0) + 1
                stalled += task.stalled
        for name, note in _RUNNING_NAMES:
            running = GaugeMetricFamily(
                PREFIX + name, f"Running tasks in the snapshot served, by status.{note}", labels=["status"]
            )
            for status, count in sorted(counts.items()):
                running.add_metric([status], count)
            yield running
        for name, note in _STALLED_NAMES:
            yield _gauge(
                name,
                "Running tasks in the snapshot served that are stalled: unchanged for stall_after seconds." + note,
                stalled,
            )
        if snapshot is not None:
            yield _gauge("snapshot_age_seconds", "Age of the snapshot served.", snapshot.age())
            yield _gauge(
                "snapshot_timestamp_seconds",
                "When the snapshot served was built (Unix time).",
                snapshot.built_ms / 1000,
            )
            yield _gauge(
                "snapshot_body_bytes", "Size of the running list's rendered response body.", len(snapshot.body)
            )
            stats = snapshot.stats
            yield _gauge("last_scan_duration_seconds", "Duration of the last complete scan.", stats.duration_ms / 1000)
            yield _gauge("last_scan_pages", "SCAN replies in the last complete scan.", stats.pages)
            yield _gauge(
                "last_scan_keys_scanned", "Distinct keys SCAN returned in the last complete scan.", stats.keys_scanned
            )
            yield _gauge(
                "last_scan_duplicate_keys",
                "Keys SCAN returned more than once in the last complete scan.",
                stats.duplicates,
            )
            yield _gauge("last_scan_values_fetched", "Values read in the last complete scan.", stats.values_fetched)
            yield _gauge(
                "last_scan_keys_expired",
                "Keys gone between SCAN and their read in the last complete scan.",
                stats.expired,
            )
            yield _gauge(
                "last_scan_values_malformed",
                "Values that were not task objects in the last complete scan.",
                stats.malformed,
            )
            yield _gauge("last_scan_tasks_matched", "Running tasks found by the last complete scan.", stats.matched)
            yield _gauge(
                "last_scan_tasks_finished",
                "Well-formed tasks in another status in the last complete scan.",
                stats.finished,
            )
        last = refresher.last_refresh
        if last is not None:
            yield _gauge(
                "last_refresh_success", "1 when the last refresh succeeded, else 0.", 1 if last.error is None else 0
            )
            yield _gauge(
                "last_refresh_timestamp_seconds", "When the last refresh started (Unix time).", last.started_ms / 1000
            )
        counters = refresher.counters
        served = CounterMetricFamily(
            f"{PREFIX}served", "Running-list requests answered with a snapshot, by source.", labels=["source"]
        )
        served.add_metric(["snapshot"], self._served.served_from_snapshot)
        served.add_metric(["live_scan"], self._served.served_by_live_scan)
        yield served
        yield _counter(
            "not_modified",
            "Answers from a snapshot that were 304 Not Modified (If-None-Match).",
            self._served.not_modified,
        )
        refused = CounterMetricFamily(
            f"{PREFIX}http_refused",
            "Connections refused or closed before their request reached the app, by reason: header_too_large "
            "(431), header_timeout (408), idle_timeout (no first byte), body_timeout.",
            labels=["reason"],
        )
        for reason, count in asdict(REFUSALS).items():
            refused.add_metric([reason], count)
        yield refused
        yield _counter(
            "producer_times_clamped",
            "Producer times later than the scan that read them (or a start after the end), clamped to what was "
            "observed.",
            refresher.producer_times_clamped,
        )
        yield _counter(
            "scan_timeouts", "Scans abandoned past max_scan_time or a Redis call timeout.", counters.timeouts
        )
        yield _counter(
            "redis_unavailable", "Refreshes that failed because Redis could not be reached.", counters.redis_unavailable
        )
        for name, documentation, read in self.extra:
            yield GaugeMetricFamily(name, documentation, value=read())


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value or 0)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def route_template(scope: Scope) -> str:
    """The path of the route that answered (or would have answered) the request as the OpenAPI document writes
    it (`/…/running/{taskId}`, no converter), else UNMATCHED."""
    route = scope.get("route")
    if isinstance(route, BaseRoute):
        return str(getattr(route, "path_format", UNMATCHED))
    # Rejected before routing (401, 429): the route the request was meant for. Matching every route's pattern
    # cost a refusal more than a whole 304: the answer is kept per path (a bounded number of them, since any
    # client can send any path).
    app = scope.get("app")
    path = scope["path"]
    known = _templates.get((id(app), path))
    if known is None:
        known = UNMATCHED
        for candidate in getattr(app, "routes", ()):
            match, _ = candidate.matches({**scope, "method": "GET"})  # the template does not depend on the method
            if match is not Match.NONE:
                known = str(getattr(candidate, "path_format", UNMATCHED))
                break
        if len(_templates) >= _MAX_TEMPLATES:
            _templates.clear()
        _templates[(id(app), path)] = known
    return known


_templates: dict[tuple[int, str], str] = {}
_MAX_TEMPLATES = 4096
