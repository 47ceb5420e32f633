"""Follows Redis' change feed: names gathered for `change_batch_ms`, read and applied as one batch; a full scan
whenever the feed cannot vouch for what it did not say (connected again, a null announcement, a full buffer).

The feed's connection, its reader and the batches run on the refreshes' own loop, beside the job; the refresher
keeps a batch and a full scan apart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

import redis.exceptions

from service.settings import RunningTasksSettings
from service.shapes.operations import ChangeFeedInfo
from service.snapshot.refresher import Refresher, RefreshFailed, RefreshRecord
from service.source.change_feed import EVERYTHING, Feed, FeedRefused
from service.source.failures import Failure

logger = logging.getLogger("service.snapshot.follower")

# From a name's arrival to the snapshot that holds its value: the buckets of the metrics' histogram (s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_RECONNECT_FIRST, _RECONNECT_CAP = 0.1, 5.0  # s: the pause before connecting again, doubling up to the cap
_REFUSED_RETRY = 300.0  # s: with change_feed = "on", how long before asking a Redis that refused again
_STOP_SECONDS = 5.0
_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError)


# off: change_feed = "off"; fallback: Redis refused the feed, periodic full scans as with "off"
FeedState = Literal["off", "connecting", "live", "reconnecting", "fallback"]


@dataclass(slots=True)
class FollowerCounters:
    names: int = 0  # key names received (under the pattern)
    ignored: int = 0  # names under the prefix that do not match the pattern
    everything: int = 0  # null announcements: FLUSHALL, FLUSHDB
    swaps: int = 0  # SWAPDB seen in INFO commandstats (not announced)
    overflows: int = 0  # batches dropped for a full scan because more names arrived than the buffer holds
    batches: int = 0
    batch_failures: int = 0  # a batch's reads failed: a full scan follows
    keys_read: int = 0  # values read by batches
    departures: int = 0  # tasks that left the running state through a batch
    reconnects: int = 0
    rescans: int = 0  # full scans the feed asked for (reconnected, null, overflow, failed batch)
    reconciliations: int = 0  # reconciliation scans while the feed was live
    missed: int = 0  # changes reconciliation scans found that the feed did not announce, in all
    last_missed: int = 0  # ... in the last reconciliation scan
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0


class Follower:
    """Owns the change feed for one refresher; `start` on the refreshes' loop, `stop` at shutdown."""

    def __init__(
        self,
        refresher: Refresher,
        open_feed: Callable[[], Feed],
        settings: RunningTasksSettings,
        swapdb_calls: Callable[[], Awaitable[int | None]] | None = None,
    ) -> None:
        """`swapdb_calls`: how many SWAPDB Redis has run, which client tracking does not announce."""
        self._refresher = refresher
        self._open_feed = open_feed
        self._swapdb_calls = swapdb_calls
        self._settings = settings
        self._mode = settings.change_feed
        self._pattern = settings.key_pattern.encode()
        self.state: FeedState = "off" if self._mode == "off" else "connecting"
        self.reason: str | None = None  # why the feed is not live, in words
        if not settings.cache_enabled:  # no snapshot to keep: every request scans
            self.state, self.reason = "off", "cache_enabled = false: every request scans"
        self.counters = FollowerCounters()
        self._pending: dict[bytes, float] = {}  # name -> monotonic time of its first arrival since taken
        self._applying: set[bytes] = set()  # names of the batch being applied
        self._rescan = False  # a full scan is owed (null announcement, overflow, failed batch)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._feed: Feed | None = None
        self._swaps: int | None = None  # SWAPDB calls Redis had run when last asked
        self.first_attempt = asyncio.Event()  # set once the first connection has succeeded or failed
        refresher.listeners.append(self._on_refresh)

    # -- life ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start following (on the refreshes' loop); returns at once. With change_feed = "off", does nothing."""
        if self._mode == "off":
            self.first_attempt.set()
            return
        self._wake = asyncio.Event()
        self.first_attempt = asyncio.Event()
        self._tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._batches())]
        if self._swapdb_calls is not None:
            self._tasks.append(asyncio.create_task(self._watch()))

    async def wait_first_attempt(self, timeout: float) -> None:
        """Until the first connection has been made or refused (or `timeout`): the startup scan must begin after
        the feed does, so that nothing written in between goes unannounced."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.first_attempt.wait(), timeout)

    async def stop(self) -> None:
        """Close the feed's connection first (its reader's read ends with it), then cancel the tasks and wait for
        them a bounded time: a shutdown never hangs on a read (one did, once in CI, cancelled mid-read)."""
        self._refresher.feed_live = False
        tasks, self._tasks = self._tasks, []
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.close()
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_SECONDS)
            if pending:
                logger.warning("change feed: %d task(s) did not stop within %.0f s; left", len(pending), _STOP_SECONDS)

    # -- the connection --------------------------------------------------------------------------------

    async def _follow(self) -> None:
        pause = _RECONNECT_FIRST
        connected_before = False
        while True:
            feed = self._open_feed()
            try:
                await feed.open()
            except FeedRefused as refused:
                await self._refused(refused.reason)
                if self._mode == "auto":
                    return  # periodic full scans from now on, as with "off"
                await asyncio.sleep(_REFUSED_RETRY)
                continue
            except _CONNECTION_ERRORS as exc:
                self._set_down("reconnecting", f"cannot connect: {exc}")
                self.first_attempt.set()
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RECONNECT_CAP)
                continue
            self._feed = feed
            with contextlib.suppress(Exception):  # the watch asks again
                self._swaps = await self._swapdb_count()
            pause = _RECONNECT_FIRST
            if connected_before:
                self.counters.reconnects += 1
            logger.info("change feed: live (%s)", "connected again" if connected_before else "connected")
            self.state, self.reason = "live", None
            self._refresher.feed_live = True
            self.first_attempt.set()
            if connected_before or self._refresher.snapshot is not None:
                # what changed while there was no feed was announced to nobody: a full scan finds it
                self._owe_rescan()
            connected_before = True
            try:
                while True:
                    names = await feed.names()
                    self._take(names)
            except _CONNECTION_ERRORS as exc:
                self._set_down("reconnecting", f"connection lost: {exc}")
                logger.warning("change feed: connection lost (%s); periodic scans until it is back", exc)
            except Exception as exc:
                # whatever else ends the reading (a reply it cannot parse, a defect): the feed can no longer vouch
                # for the snapshot, so never leave it marked live; connect again as after a lost connection
                self._set_down("reconnecting", f"feed failed: {exc!r}")
                logger.exception("change feed: reading the announcements failed; periodic scans until it is back")
                await asyncio.sleep(_RECONNECT_CAP)
            finally:
                self._feed = None
                await feed.close()

    async def _refused(self, reason: str) -> None:
        if self._mode == "auto":
            self._set_down("fallback", f"Redis refused client tracking: {reason}")
            logger.warning("change feed: Redis refused client tracking (%s); periodic full scans instead", reason)
        else:
            self._set_down("reconnecting", f"Redis refused client tracking: {reason}")
            logger.error(
                'change feed: Redis refused client tracking (%s); change_feed = "on": asking again in %.0f s, '
                "periodic full scans meanwhile",
                reason,
                _REFUSED_RETRY,
            )
        self.first_attempt.set()

    def _set_down(self, state: FeedState, reason: str) -> None:
        self.state, self.reason = state, reason
        self._refresher.feed_live = False

    async def _swapdb_count(self) -> int | None:
        """Raises the client's errors."""
        return None if self._swapdb_calls is None else await self._swapdb_calls()

    async def _watch(self) -> None:
        # Once per refresh interval, one small call through the pool (INFO commandstats):
        # - SWAPDB replaces every key of the database without a word on the feed (seen on Redis 7.0): a change of
        #   its count tells that a full scan is owed. The count to compare with is taken as the feed goes live.
        # - The feed's connection can stay healthy while the others fail (a password set since, maxclients): a
        #   failure here asks for a full scan, which fails like a periodic one and leaves the job scanning until
        #   one succeeds (Refresher.run_job), so that the service says Redis is unavailable rather than serve on.
        while True:
            await asyncio.sleep(self._settings.refresh_interval)
            if self.state != "live":
                continue
            try:
                now = await self._swapdb_count()
            except Exception:
                if not self._refresher.failing:
                    self._owe_rescan()
                continue
            if now is not None and self._swaps is not None and now != self._swaps:
                self.counters.swaps += 1
                self._owe_rescan()
            self._swaps = now

    # -- names and batches -----------------------------------------------------------------------------

    def _take(self, names: list[bytes] | None) -> None:
        if names is EVERYTHING:
            self.counters.everything += 1
            self._owe_rescan()
            return
        now = time.monotonic()
        pending = self._pending
        pattern = self._pattern
        for name in names:
            if not fnmatchcase(name, pattern):
                self.counters.ignored += 1
                continue
            self.counters.names += 1
            pending.setdefault(name, now)
        if len(pending) > self._settings.change_buffer:
            self.counters.overflows += 1
            self._owe_rescan()
        self._wake.set()

    def _owe_rescan(self) -> None:
        self._rescan = True
        self._pending.clear()  # the full scan reads them all
        self._wake.set()

    async def _batches(self) -> None:
        # At most one batch starts per change_batch_ms: a write after a quiet spell is read at once, and the names
        # of a burst gather while the batch before them is applied and for what is left of the interval. (Waiting
        # a whole interval after the first name instead added the interval to every write's latency.)
        interval = self._settings.change_batch_ms / 1000
        started = -interval
        while True:
            await self._wake.wait()
            wait = started + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            started = time.monotonic()
            try:
                if self._rescan:
                    self._rescan = False
                    self.counters.rescans += 1
                    if self._refresher.scanning:
                        # a scan in flight may have passed the keys that changed: wait for it, then scan anew
                        await self._refresher.refresh("feed")
                    await self._refresher.refresh("feed")
                elif self._pending:
                    await self._apply()
            except RefreshFailed:
                pass  # counted and logged by the refresher; the job scans again on its schedule
            except Exception:
                self.counters.batch_failures += 1
                logger.warning("change feed: a batch failed; a full scan follows", exc_info=True)
                self._owe_rescan()
                await asyncio.sleep(_RECONNECT_FIRST)

    async def _apply(self) -> None:
        pending, self._pending = self._pending, {}
        self._applying = set(pending)
        try:
            reads = await self._refresher.apply_changes(list(pending))
        finally:
            self._applying = set()
        if reads is None:
            return  # no snapshot yet: the startup scan covers them
        done = time.monotonic()
        counters = self.counters
        counters.batches += 1
        counters.keys_read += reads.stats.values_fetched
        counters.departures += len(reads.finished) + len(reads.absent)
        for arrived in pending.values():
            latency = done - arrived
            counters.latency_counts[bisect_left(LATENCY_BUCKETS, latency)] += 1
            counters.latency_sum += latency

    def _on_refresh(self, record: RefreshRecord, failure: Failure | None) -> None:
        if record.trigger != "reconcile" or failure is not None:
            return
        # changes the scan found whose names had not arrived (names that arrived during the scan wait for it)
        missed = self._refresher.last_scan_changes - self._pending.keys() - self._applying
        self.counters.reconciliations += 1
        self.counters.last_missed = len(missed)
        self.counters.missed += len(missed)
        if missed:
            logger.warning(
                "change feed: the reconciliation scan found %d change(s) the feed did not announce, e.g. %r",
                len(missed),
                sorted(missed)[:3],
            )

    def info(self) -> ChangeFeedInfo:
        """What cache-stats says of the feed."""
        c = self.counters
        return ChangeFeedInfo(
            mode=self._mode,
            state=self.state,
            reason=self.reason,
            names_received=c.names,
            names_ignored=c.ignored,
            null_announcements=c.everything,
            swapdb_seen=c.swaps,
            overflows=c.overflows,
            batches=c.batches,
            batch_failures=c.batch_failures,
            keys_read=c.keys_read,
            departures=c.departures,
            reconnects=c.reconnects,
            rescans=c.rescans,
            reconciliations=c.reconciliations,
            missed=c.missed,
            last_missed=c.last_missed,
            pending=len(self._pending),
            reconcile_interval_seconds=self._settings.reconcile_interval,
            batch_ms=self._settings.change_batch_ms,
        )
