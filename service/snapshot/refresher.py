"""Builds the next snapshot: the APScheduler job, and the single-flight scan that live requests share."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from service.domain.times import format_time
from service.domain.tracker import TaskView, Tracker
from service.settings import RunningTasksSettings
from service.shapes.operations import JobInfo, LastRefresh, SnapshotInfo
from service.snapshot import heap
from service.snapshot.changes import ChangeLog
from service.snapshot.snapshot import Snapshot, build_snapshot, update_snapshot
from service.snapshot.worker import RefreshLoop, run_on
from service.source.failures import Failure, classify, describe
from service.source.scanner import KeyReads, Scanner, ScanStats

logger = logging.getLogger("service.snapshot.refresher")

JOB_ID = "refresh-running-tasks"
# While Redis keeps failing, requests that need a live scan get the last error for this long instead of each
# starting a scan of their own: the job keeps retrying on its own schedule.
_FAILURE_HOLD_SECONDS = 1.0
_REMINDER_SECONDS = 60.0
# A scan that changed more than this fraction of the tasks builds the next snapshot again rather than update it.
_REBUILD_FRACTION = 4


class _QuietSkips(logging.Filter):
    """APScheduler warns at every tick that finds the previous refresh still running. A slow Redis would flood
    the log with that; the refresher counts those ticks instead (`jobRunsSkipped` in cache-stats)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


logging.getLogger("apscheduler.scheduler").addFilter(_QuietSkips())


class _QuietShutdown(logging.Filter):
    """A stop cancels the job's task (`Refresher.stop`). When the task had not started yet, the job's own handling
    of the cancellation never runs, and APScheduler's executor logged the expected end as an error with a traceback
    (seen once in CI at a test service's shutdown). Other job errors stay logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None or not isinstance(record.exc_info[1], asyncio.CancelledError)


logging.getLogger("apscheduler.executors.default").addFilter(_QuietShutdown())


class RefreshFailed(Exception):
    """A scan failed; `failure` says what kind of failure it was."""

    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


@dataclass(slots=True)
class Counters:
    refreshes_ok: int = 0
    refreshes_failed: int = 0
    job_runs_skipped: int = 0  # ticks that found the previous refresh still running
    timeouts: int = 0
    redis_unavailable: int = 0
    internal_errors: int = 0


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    started_ms: int
    duration_ms: float
    trigger: str  # "job", "startup" or "request"
    stats: dict[str, int | float] | None
    error: str | None

    def shape(self) -> LastRefresh:
        counts: dict[str, Any] = {k: v for k, v in (self.stats or {}).items() if k not in ("started_ms", "duration_ms")}
        return LastRefresh(
            started_at=format_time(self.started_ms),
            duration_ms=self.duration_ms,
            trigger=self.trigger,
            error=self.error,
            **counts,
        )


# Called after every refresh with its record and, when it failed, how; e.g. the metrics' histogram.
RefreshListener = Callable[[RefreshRecord, Failure | None], None]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _on_refresh_loop(
    method: Callable[Concatenate[Refresher, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[Refresher, _P], Coroutine[Any, Any, _R]]:
    """The method runs on the refresher's own loop when it has one (service.snapshot.worker), whichever loop
    calls it: the scan, the job and what they share stay on that loop."""

    async def on_its_loop(self: Refresher, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await run_on(self._loop, method(self, *args, **kwargs))

    functools.update_wrapper(on_its_loop, method)
    return on_its_loop


class Refresher:
    """Owns the current snapshot and everything that replaces it."""

    def __init__(
        self,
        scanner: Scanner,
        tracker: Tracker,
        settings: RunningTasksSettings,
        clock: Callable[[], int] | None = None,
        loop: RefreshLoop | None = None,
        changes: ChangeLog | None = None,
    ) -> None:
        """`loop`: run every refresh, and the job, on that loop of their own (see service.snapshot.worker); the
        refresher is then used from the serving loop as from any other. `changes`: told of every snapshot
        installed (service.snapshot.changes)."""
        self.changes = changes
        self._scanner = scanner
        self._loop = loop
        self._tracker = tracker
        self._settings = settings
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._etag_prefix = secrets.token_hex(4)  # ETags from an earlier process never match this one's
        self._inflight: asyncio.Task[Snapshot] | None = None
        self._failure: tuple[float, RefreshFailed] | None = None
        self._failing_since: float | None = None
        self._last_reminder = 0.0
        # Generations only grow, across restarts too, and two processes never count in the same range: a client
        # that resumes (Last-Event-ID, since=) with a generation of an earlier process or of another replica gets a
        # fresh answer, never another process's changes. Below 2**53: exact as a JSON number in any client.
        self.first_generation = self._clock() * 1000 + secrets.randbelow(1000)
        self._generation = self.first_generation
        self._full_scans = 0  # complete ones
        self._heap = heap.Settler()
        self._scheduler: AsyncIOScheduler | None = None
        self._stopped = False
        self.snapshot: Snapshot | None = None
        self.last_refresh: RefreshRecord | None = None
        self.counters = Counters()
        self.listeners: list[RefreshListener] = []
        self._failing: Failure | None = None
        # A full scan and a change feed's batch never run at once: both change the tracker and the scanner's memory.
        self._lock = asyncio.Lock()
        # Clear while a change feed's batch runs: a full scan waits for it between two steps (Scanner.scan's pause),
        # so that a batch is not kept behind a scan's pages (at a million keys, reconciliation scans take seconds).
        self._no_batch = asyncio.Event()
        self._no_batch.set()
        # Set by the change feed's follower (service.snapshot.follower) while its feed is live: the job then only
        # applies what time changes, and scans fully every `reconcile_interval`.
        self.feed_live = False
        self._last_full_scan = 0.0  # monotonic, the end of the last complete scan
        # task keys the last complete scan found changed, appeared or gone: what a reconciliation measures
        self.last_scan_changes: set[bytes] = set()

    @property
    def scanning(self) -> bool:
        """Whether a scan is running right now."""
        return self._inflight is not None

    @property
    def failing(self) -> bool:
        """Whether the last refresh failed."""
        return self._failure is not None

    @property
    def scanner(self) -> Scanner:
        return self._scanner

    @property
    def producer_times_clamped(self) -> int:
        """Producer times after the scan that read them (or starts after ends), clamped, since the start."""
        return self._tracker.future_times

    # -- the scan, shared ------------------------------------------------------------------------------

    @_on_refresh_loop
    async def refresh(self, trigger: str = "job") -> Snapshot:
        """Scan now, or join the scan already running; install and return the new snapshot."""
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._refresh(trigger))
            self._inflight.add_done_callback(self._clear_inflight)
        # shield: a request that goes away must not cancel a scan that others wait for
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, task: asyncio.Task[Snapshot]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here so that a failure nobody awaited is not reported as lost

    async def _refresh(self, trigger: str) -> Snapshot:
        return await self._full_scan(trigger)

    async def _full_scan(self, trigger: str) -> Snapshot:
        started_ms = self._clock()
        started = time.perf_counter()
        self._tracker.begin_scan()
        try:
            with heap.paused(self.snapshot is None):  # a first scan: see heap.paused
                stats = await self._scanner.scan(self._tracker.observe, self._no_batch.wait)
        except Exception as exc:
            failure = self._record_failure(exc, trigger, started_ms, started)
            raise failure from exc
        # The change feed's batches go on while the scan reads (what they read stands over what the scan reads of
        # the same keys: Tracker and Scanner claims); taking its results in and installing them is theirs alone.
        async with self._lock:
            departed = self._tracker.end_scan()
            prefix = self._scanner.prefix
            # what the scan found changed, less what batches read meanwhile (announced, then): a reconciliation's finds
            announced = {prefix + task_id.encode() for task_id in self._tracker.last_claimed}
            found = self._scanner.take_changed() | {prefix + task_id.encode() for task_id in departed}
            self.last_scan_changes = found - announced
            self._last_full_scan = time.monotonic()
            # a scan that changed a few tasks (a reconciliation while the feed is live) updates the snapshot as a
            # batch does; one that changed many (a first scan: all) builds it again
            few = -1 if self.snapshot is None else self.snapshot.task_count // _REBUILD_FRACTION
            renewed = self._tracker.take_renewed(few)
            changed: dict[str, TaskView | None] | None = None
            if renewed is not None and len(renewed) + len(departed) <= few:
                changed = {**renewed, **dict.fromkeys(departed)}
            snapshot = await self._install(stats, changed)
        self._full_scans += 1
        self._heap.settle(thaw=self._full_scans % heap.THAW_EVERY == 0)
        duration = round((time.perf_counter() - started) * 1000, 3)
        record = RefreshRecord(started_ms, duration, trigger, stats.as_dict(), None)
        self.last_refresh = record
        self.counters.refreshes_ok += 1
        self._failure = None
        if self._failing_since is not None:
            logger.warning("refresh recovered after %.1f s of failures", time.monotonic() - self._failing_since)
            self._failing_since = None
            self._failing = None
        self._notify(record, None)
        logger.debug(
            "refresh %d (%s): %d running of %d keys in %.1f ms",
            self._generation,
            trigger,
            stats.matched,
            stats.keys_scanned,
            duration,
        )
        return snapshot

    async def _install(self, stats: ScanStats, touched: dict[str, TaskView | None] | None = None) -> Snapshot:
        """The next snapshot, from the tracker's views; `stats` are the last complete scan's. `touched`: only those
        tasks may have changed since the snapshot installed last (a batch, a tick): the snapshot is updated, not
        built again."""
        self._generation += 1
        previous, now = self.snapshot, self._clock()
        if touched is not None and previous is not None:
            snapshot = await update_snapshot(self._generation, previous, touched, now, self._etag_prefix, stats)
        else:
            views: list[TaskView] = []
            for part in self._tracker.views_in_slices():  # tens of thousands of tasks: yield between slices
                await asyncio.sleep(0)
                views += part
            snapshot = await build_snapshot(self._generation, views, stats, now, previous, self._etag_prefix)
        self.snapshot = snapshot
        if self.changes is not None:
            self.changes.record(previous, snapshot, touched)
        return snapshot

    @_on_refresh_loop
    async def apply_changes(self, keys: list[bytes]) -> KeyReads | None:
        """A change feed's batch: read the values of `keys`, take them in, and install the next snapshot, made
        from the previous one plus those tasks (only they are rendered again). None before the first complete
        scan, which reads them anyway. Raises the client's errors."""
        if self.snapshot is None and self._inflight is not None:
            # the first scan is running: without a snapshot to update, the batch waits for it (the scan may have
            # passed these keys before they changed)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._inflight)
        self._no_batch.clear()  # a scan running meanwhile waits at its next step: the batch goes first
        try:
            async with self._lock:
                if self.snapshot is None:
                    return None
                reads = await self._scanner.read_keys(keys)
                touched = self._tracker.apply(reads.running, reads.finished, reads.absent)
                await self._install(self.snapshot.stats, touched)
                self._heap.settle_if_due()
                return reads
        finally:
            self._no_batch.set()

    @_on_refresh_loop
    async def tick(self) -> Snapshot | None:
        """What time alone changes (stalled, a passed estimate), without reading Redis: the job's work while the
        change feed is live."""
        async with self._lock:
            if self.snapshot is None:
                return None
            touched = self._tracker.retime(self._clock())
            return await self._install(self.snapshot.stats, touched)

    def _record_failure(self, exc: Exception, trigger: str, started_ms: int, started: float) -> RefreshFailed:
        failure_kind = classify(exc)
        detail = describe(exc, self._scanner.source.tls)
        duration = round((time.perf_counter() - started) * 1000, 3)
        record = RefreshRecord(started_ms, duration, trigger, None, detail)
        self.last_refresh = record
        self.counters.refreshes_failed += 1
        if failure_kind is Failure.TIMEOUT:
            self.counters.timeouts += 1
        elif failure_kind is Failure.REDIS_UNAVAILABLE:
            self.counters.redis_unavailable += 1
        else:
            self.counters.internal_errors += 1
        now = time.monotonic()
        failure = RefreshFailed(failure_kind, detail)
        self._failure = (now, failure)
        # one line when the state changes (a new kind of failure included), then a reminder now and then: a dead
        # Redis, or a Redis that refuses our commands, must not flood the log
        if failure_kind is not self._failing or now - self._last_reminder >= _REMINDER_SECONDS:
            if failure_kind is Failure.INTERNAL:
                logger.error("refresh failed (%s): %s", trigger, detail, exc_info=exc)
            else:
                logger.warning("refresh failed (%s): %s", trigger, detail)
            self._last_reminder = now
        self._failing = failure_kind
        self._failing_since = self._failing_since or now
        self._notify(record, failure_kind)
        return failure

    def _notify(self, record: RefreshRecord, failure: Failure | None) -> None:
        for listener in self.listeners:
            try:
                listener(record, failure)
            except Exception:  # an observer must never break the refresh it observes
                logger.exception("refresh listener %r failed", listener)

    # -- what requests ask for -------------------------------------------------------------------------

    def fresh(self) -> Snapshot | None:
        """The snapshot when the cache is on and it is fresh; else None (`current()` scans)."""
        snapshot = self.snapshot
        if self._settings.cache_enabled and snapshot is not None and snapshot.is_fresh(self._settings.cache_ttl):
            return snapshot
        return None

    async def current(self) -> tuple[Snapshot, bool]:
        """The snapshot to serve and whether it came from a live scan. Raises RefreshFailed."""
        fresh = self.fresh()
        if fresh is not None:
            return fresh, False
        failure = self._failure
        if failure is not None and time.monotonic() - failure[0] < _FAILURE_HOLD_SECONDS:
            raise failure[1]
        return await self.refresh("request"), True

    def is_ready(self) -> bool:
        snapshot = self.snapshot
        return snapshot is not None and snapshot.is_fresh(self._settings.cache_ttl)

    # -- the job ---------------------------------------------------------------------------------------

    async def run_job(self) -> None:
        """The scheduled refresh: never raises, keeps the last good snapshot on failure."""
        if self._stopped:
            return  # a tick the scheduler had already handed to the loop when it shut down
        try:
            if not self.feed_live or self._failure is not None:
                # periodic scans without the feed, and after a failure until one succeeds: the feed's connection
                # may live on while Redis fails the others
                await self.refresh("job")
            elif time.monotonic() - self._last_full_scan >= self._settings.reconcile_interval:
                await self.refresh("reconcile")
            else:
                await self.tick()
        except RefreshFailed:
            pass  # counted and logged where it happened
        except asyncio.CancelledError:
            # the scheduler cancels a running job when it shuts down: an expected end, not an error to log
            logger.debug("refresh job cancelled by shutdown")
        except Exception:  # pragma: no cover - the job boundary must not die
            logger.exception("refresh job failed unexpectedly")

    @_on_refresh_loop
    async def start(self) -> None:
        """Schedule the job every `refresh_interval` (one at a time, missed runs coalesced)."""
        self._stopped = False
        scheduler = AsyncIOScheduler(timezone="UTC", event_loop=asyncio.get_running_loop())
        scheduler.add_job(
            self.run_job,
            "interval",
            seconds=self._settings.refresh_interval,
            id=JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        scheduler.add_listener(self._on_skipped_run, EVENT_JOB_MAX_INSTANCES)
        scheduler.start()
        self._scheduler = scheduler

    def _on_skipped_run(self, event: JobSubmissionEvent) -> None:
        self.counters.job_runs_skipped += 1

    @_on_refresh_loop
    async def stop(self) -> None:
        self._stopped = True
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        inflight = self._inflight
        if inflight is not None:
            inflight.cancel()
            try:
                await inflight
            except (asyncio.CancelledError, RefreshFailed):
                pass

    def next_run(self) -> datetime | None:
        if self._scheduler is None:
            return None
        job = self._scheduler.get_job(JOB_ID)
        return None if job is None else job.next_run_time

    def snapshot_info(self) -> SnapshotInfo | None:
        """What cache-stats says of the snapshot."""
        snapshot = self.snapshot
        if snapshot is None:
            return None
        ttl = self._settings.cache_ttl
        return SnapshotInfo(
            generation=snapshot.generation,
            built_at=format_time(snapshot.built_ms),
            age_seconds=round(snapshot.age(), 3),
            ttl_seconds=ttl,
            stale=not snapshot.is_fresh(ttl),
            task_count=snapshot.task_count,
            etag=snapshot.etag,
            body_bytes=len(snapshot.body),
        )

    def job_info(self) -> JobInfo:
        next_run = self.next_run()
        return JobInfo(
            running=self._scheduler is not None,
            interval_seconds=self._settings.refresh_interval,
            next_run=None if next_run is None else next_run.isoformat(),
        )
