"""`GET .../tasks/running/events`: the running list as a server-sent event stream. A `snapshot` event (the list's
data for the stream's filters and projection, with its generation), then a `changes` event for every new snapshot
that changes the view, heartbeat comments while nothing does; `Last-Event-ID` resumes from the change log.

A small ASGI response of our own rather than sse-starlette's EventSourceResponse (see the commit that added it):
each change is encoded once per view and the same bytes are queued to every stream of that view, the queue is
bounded with a reset, and the service ends its streams itself when it stops (`StreamHub.close`), without
patching uvicorn."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from service.http.envelope import ErrorCode, send_error
from service.http.security import header
from service.http.sse import HEARTBEAT, frame, frame_chunks, last_event_id, retry
from service.http.streams import StreamHub, Subscriber
from service.query.answers import QueryService
from service.query.deltas import delta, encode_changes, heads, view_of
from service.query.running import Query
from service.snapshot.changes import ChangeLog
from service.snapshot.refresher import Refresher
from service.snapshot.snapshot import Snapshot

logger = logging.getLogger("service.http.events")

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx buffers proxied responses unless told not to: events would wait for its buffer to fill
    (b"x-accel-buffering", b"no"),
]
_BYTES_PER_YIELD = 2 * 1024 * 1024


class EventStream:
    """The endpoint, as a plain ASGI app: refusals (a bad parameter, no snapshot, too many streams) are envelopes
    sent before the stream starts."""

    def __init__(self, hub: StreamHub, refresher: Refresher, queries: QueryService, log: ChangeLog) -> None:
        self._hub = hub
        self._refresher = refresher
        self._queries = queries
        self._log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        items = Request(scope).query_params.multi_items() if scope["query_string"] else []
        view = view_of(self._queries.parse_running(items))  # a QueryError is the 400 envelope
        snapshot, _ = await self._refresher.current()  # a RefreshFailed is the 503/504 envelope
        if scope["method"] == "HEAD":
            await send({"type": "http.response.start", "status": 200, "headers": list(_HEADERS)})
            await send({"type": "http.response.body", "body": b""})
            return
        hub = self._hub
        subscriber = hub.subscribe(view, snapshot.generation)
        if subscriber is None:
            wait = b"%d" % max(1, math.ceil(hub.settings.retry_ms / 1000))
            await send_error(send, ErrorCode.TOO_MANY_STREAMS, ((b"retry-after", wait),))
            return
        # what a reconnecting client missed, when the log still holds it; else the snapshot (no await before this:
        # the generation the stream starts from is the one the hub sees)
        resumed = self._resume(subscriber, last_event_id(header(scope, b"last-event-id")))
        # A stream that starts from `snapshot`: a change recorded after `current()` gave it and before `subscribe`
        # reached no stream (the hub publishes to the streams it holds), and the stream, at the snapshot's
        # generation, would wait for it forever; the log has it, sent right after the snapshot.
        catch_up = self._since(subscriber, snapshot.generation) if resumed is None else None
        watcher = asyncio.create_task(_watch_disconnect(receive, subscriber))
        pump = asyncio.create_task(self._pump(send, subscriber, snapshot, resumed, catch_up))
        hub.track(subscriber, pump)
        try:
            await asyncio.wait((pump,))
            if not pump.cancelled() and pump.exception() is not None:
                hub.counters.dropped += 1
                logger.warning("event stream ended by an error: %r", pump.exception())
        finally:
            watcher.cancel()
            pump.cancel()
            hub.unsubscribe(subscriber)

    def _resume(self, subscriber: Subscriber, generation: int | None) -> bytes | None:
        """The `changes` event that brings a client from `generation` up to date (b"" when nothing changed in its
        view), and the stream moved to that generation; None when it needs a snapshot."""
        if generation is None:
            return None
        resumed = self._since(subscriber, generation)
        if resumed is None:
            self._hub.counters.resets += 1
        return resumed

    def _since(self, subscriber: Subscriber, generation: int) -> bytes | None:
        """The `changes` event from `generation` to the log's newest (b"" when nothing changed in the view), the
        stream moved to that generation; None when the log no longer holds `generation`."""
        changes = self._log.since(generation)
        if changes is None:
            return None
        net = delta(changes, subscriber.view, generation)
        subscriber.generation = net.generation
        if not net:
            return b""
        snapshot = self._refresher.snapshot
        assert snapshot is not None  # (a snapshot was served to get here)
        return frame(b"changes", net.generation, (encode_changes(net, subscriber.view, heads(snapshot)),))

    async def _pump(
        self, send: Send, subscriber: Subscriber, snapshot: Snapshot, resumed: bytes | None, catch_up: bytes | None
    ) -> None:
        hub = self._hub
        counters = hub.counters
        await send({"type": "http.response.start", "status": 200, "headers": list(_HEADERS)})
        await self._write(send, retry(hub.settings.retry_ms), event=False)
        if resumed is None:
            await self._send_snapshot(send, subscriber.view, snapshot)
            if catch_up:
                await self._write(send, catch_up)
        elif resumed:
            await self._write(send, resumed)
        while not subscriber.closed:
            if subscriber.reset:
                subscriber.reset = False
                subscriber.queue.clear()  # whatever was queued since is older than the snapshot taken now
                current = self._refresher.snapshot or snapshot
                subscriber.generation = current.generation
                await self._send_snapshot(send, subscriber.view, current)
            elif subscriber.queue:
                # what queued meanwhile goes in one write: a stream that fell a few events behind catches up in one
                # send, not one per event
                frames = list(subscriber.queue)
                subscriber.queue.clear()
                await self._write(send, b"".join(frames), events=len(frames))
                subscriber.written = time.monotonic()
            elif subscriber.heartbeat:  # nothing sent for heartbeat_seconds (the hub's sweep says so)
                subscriber.heartbeat = False
                await self._write(send, HEARTBEAT, event=False)
                subscriber.written = time.monotonic()
                counters.heartbeats += 1
            else:
                subscriber.wake.clear()
                await subscriber.wake.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_snapshot(self, send: Send, view: Query, snapshot: Snapshot) -> None:
        chunks = frame_chunks(b"snapshot", snapshot.generation, self._queries.stream_snapshot(snapshot, view))
        unyielded = 0
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._hub.counters.bytes += len(chunk)
            unyielded += len(chunk)
            if unyielded >= _BYTES_PER_YIELD:  # a large snapshot must not hold the loop (see delivery.send_chunks)
                unyielded = 0
                await asyncio.sleep(0)
        self._hub.counters.events += 1

    async def _write(self, send: Send, data: bytes, event: bool = True, events: int = 1) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})
        counters = self._hub.counters
        counters.bytes += len(data)
        if event:
            counters.events += events


async def _watch_disconnect(receive: Receive, subscriber: Subscriber) -> None:
    """The client going away ends the stream at once (uvicorn's send does not say so)."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            subscriber.close()
            return
