"""The event streams' fan-out: who watches which view, and each change set encoded once per view and queued for
every stream of that view.

Change sets are recorded where the refreshes run (their own loop, in a thread) and published here on the serving
loop, in order. A stream's queue is bounded: one that falls `queue_events` behind loses what it queued and is
sent one fresh snapshot instead (a reset), so a slow reader costs a bounded amount of memory. Closing a stream
takes it out of its view, and a view without streams is forgotten: nothing is left behind."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from service.http.sse import frame
from service.query.deltas import delta, encode_changes, heads
from service.query.running import Query
from service.settings import EventsSettings
from service.shapes.events import StreamsInfo
from service.snapshot.changes import ChangeLog, ChangeSet
from service.snapshot.snapshot import Snapshot

logger = logging.getLogger("service.http.streams")
# When the service stops, a stream whose client reads nothing (its send waits on a full socket) is cut after this
# long: uvicorn's graceful shutdown waits for every response to finish.
SHUTDOWN_GRACE_SECONDS = 1.0


@dataclass(slots=True)
class StreamCounters:
    opened: int = 0
    refused: int = 0
    events: int = 0
    bytes: int = 0
    heartbeats: int = 0
    resets: int = 0
    events_dropped: int = 0
    dropped: int = 0
    encodes: int = 0
    deliveries: int = 0


class Subscriber:
    """One open stream: its view, the generation it has reached, what waits to be sent."""

    __slots__ = ("closed", "generation", "heartbeat", "queue", "reset", "view", "wake", "written")

    def __init__(self, view: Query, generation: int) -> None:
        self.view = view
        self.generation = generation  # of the last event queued (or the snapshot sent)
        self.queue: deque[bytes] = deque()  # encoded frames, shared with the view's other streams
        self.reset = False  # a fresh snapshot is owed instead of what was queued
        self.closed = False  # the client went away, or the service ends the stream
        self.wake = asyncio.Event()  # set when there is something to do
        self.written = time.monotonic()  # when the stream last sent something
        self.heartbeat = False  # a heartbeat is owed: nothing sent for heartbeat_seconds (StreamHub's sweep)

    def close(self) -> None:
        self.closed = True
        self.queue.clear()
        self.wake.set()


class StreamHub:
    """Every open stream, grouped by view; `publish` takes each change set to them."""

    def __init__(self, settings: EventsSettings, log: ChangeLog) -> None:
        self._settings = settings
        self._log = log
        self._views: dict[Query, set[Subscriber]] = {}
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None
        self._pumps: dict[Subscriber, asyncio.Task[None]] = {}  # each stream's writer, cut if it outstays a stop
        self.counters = StreamCounters()

    @property
    def settings(self) -> EventsSettings:
        return self._settings

    @property
    def open(self) -> int:
        return self._open

    @property
    def views(self) -> dict[Query, set[Subscriber]]:
        """The views watched now and their streams (read only)."""
        return self._views

    def start(self) -> None:
        """Listen to the change log, from the serving loop (where `publish` will run), and sweep for heartbeats."""
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._log.listeners.append(self._recorded)
        self._sweeper = self._loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        # One pass over the streams a fraction of the interval, rather than a timer per stream and event: with a
        # thousand streams and tens of events a second each, the timers cost more than the events.
        interval = self._settings.heartbeat_seconds
        while True:
            await asyncio.sleep(interval / 4)
            idle_since = time.monotonic() - interval
            for subscribers in self._views.values():
                for subscriber in subscribers:
                    if subscriber.written <= idle_since and not subscriber.heartbeat:
                        subscriber.heartbeat = True
                        subscriber.wake.set()

    def close(self) -> None:
        """End every stream now (the service stops): each sends what it has and finishes its response."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for subscribers in list(self._views.values()):
            for subscriber in list(subscribers):
                if not subscriber.closed:
                    self.counters.dropped += 1
                subscriber.close()
        if self._recorded in self._log.listeners:
            self._log.listeners.remove(self._recorded)
        if self._pumps:
            asyncio.get_running_loop().call_later(SHUTDOWN_GRACE_SECONDS, self._cut)

    def _cut(self) -> None:
        for pump in list(self._pumps.values()):
            pump.cancel()

    def _recorded(self, snapshot: Snapshot, change: ChangeSet) -> None:
        # where the refreshes run: hand it over to the serving loop, in order
        loop = self._loop
        if loop is not None and not loop.is_closed() and self._views:
            loop.call_soon_threadsafe(self.publish, snapshot, change)

    # -- streams ---------------------------------------------------------------------------------------

    def subscribe(self, view: Query, generation: int) -> Subscriber | None:
        """A new stream of `view` whose snapshot is of `generation`; None when `max_streams` are open (or the
        service is stopping)."""
        if self._closing or self._open >= self._settings.max_streams:
            self.counters.refused += 1
            return None
        subscriber = Subscriber(view, generation)
        self._views.setdefault(view, set()).add(subscriber)
        self._open += 1
        self.counters.opened += 1
        return subscriber

    def track(self, subscriber: Subscriber, pump: asyncio.Task[None]) -> None:
        """`pump` writes the stream of `subscriber`: cancelled when a stop finds it still running after a grace."""
        self._pumps[subscriber] = pump

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Release the stream: out of its view, and the view forgotten when it was the last one."""
        subscriber.close()
        self._pumps.pop(subscriber, None)
        subscribers = self._views.get(subscriber.view)
        if subscribers is None or subscriber not in subscribers:
            return
        subscribers.discard(subscriber)
        self._open -= 1
        if not subscribers:
            del self._views[subscriber.view]

    # -- fan-out ---------------------------------------------------------------------------------------

    def publish(self, snapshot: Snapshot, change: ChangeSet) -> None:
        """Queue `change` (which led to `snapshot`) to every stream it concerns, encoded once per view."""
        counters, limit = self.counters, self._settings.queue_events
        head = heads(snapshot)
        for view, subscribers in self._views.items():
            encoded: bytes | None = None
            for subscriber in subscribers:
                if subscriber.reset or subscriber.closed or subscriber.generation >= change.generation:
                    continue  # a snapshot is owed anyway, or it is already as new as this
                if subscriber.generation != change.base:
                    self._reset(subscriber)  # a gap: what it holds cannot be brought up to date
                    continue
                if encoded is None:
                    net = delta((change,), view, change.generation)
                    if not net:
                        break  # nothing in this view changed: its streams simply move on (below)
                    encoded = frame(b"changes", change.generation, (encode_changes(net, view, head),))
                    counters.encodes += 1
                if len(subscriber.queue) >= limit:
                    self._reset(subscriber)
                    continue
                subscriber.queue.append(encoded)
                subscriber.generation = change.generation
                counters.deliveries += 1
                subscriber.wake.set()
            if encoded is None:  # nothing to send: the view's streams move on to this generation all the same
                for subscriber in subscribers:
                    if subscriber.reset or subscriber.closed or subscriber.generation >= change.generation:
                        continue
                    if subscriber.generation == change.base:
                        subscriber.generation = change.generation
                    else:
                        self._reset(subscriber)

    def _reset(self, subscriber: Subscriber) -> None:
        self.counters.resets += 1
        self.counters.events_dropped += len(subscriber.queue)
        subscriber.queue.clear()
        subscriber.reset = True
        subscriber.wake.set()

    def info(self) -> StreamsInfo:
        counters = self.counters
        return StreamsInfo(
            open=self._open,
            max_streams=self._settings.max_streams,
            views=len(self._views),
            views_shared=sum(1 for subscribers in self._views.values() if len(subscribers) > 1),
            opened=counters.opened,
            refused=counters.refused,
            events=counters.events,
            bytes=counters.bytes,
            heartbeats=counters.heartbeats,
            resets=counters.resets,
            events_dropped=counters.events_dropped,
            dropped=counters.dropped,
            encodes=counters.encodes,
            deliveries=counters.deliveries,
            held_generations=len(self._log),
        )


StreamsReader = Callable[[], StreamsInfo]
