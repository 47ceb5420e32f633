"""Redis' own change feed: server-assisted client tracking in broadcasting mode.

One connection of its own asks Redis to announce every key written, deleted, expired or evicted under the task
keys' prefix (`CLIENT TRACKING ON REDIRECT <itself> BCAST PREFIX <prefix>`) and subscribes to
`__redis__:invalidate`, where the announcements arrive. It needs no configuration on the server (keyspace
notifications need `notify-keyspace-events`). A null announcement (FLUSHALL, FLUSHDB) means "everything
may have changed"; SWAPDB is not announced at all (Redis 7.0), which the follower watches for. The connection is
the one thing this module owns: what to do with the names is the follower's business (service.snapshot.follower)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions

logger = logging.getLogger("service.source.change_feed")

CHANNEL = b"__redis__:invalidate"
# Everything changed (FLUSHALL, FLUSHDB, SWAPDB, a tracking table overflow): the reader must rescan.
EVERYTHING = None
# The connection is pinged this often while nothing arrives; no reply within the Redis timeout after that: dead.
PING_SECONDS = 5.0


class FeedRefused(Exception):
    """Redis will not give this client a change feed: CLIENT is renamed, denied by ACL, unknown (Redis < 6), or a
    proxy does not pass it. `reason` says which, in Redis' own words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Feed(Protocol):
    """What the follower reads announcements from: one server's tracking connection (`ChangeFeed`), or one per
    primary of a cluster (service.source.cluster_feed)."""

    async def open(self) -> None: ...

    async def names(self) -> list[bytes] | None: ...

    async def close(self) -> None: ...


class ChangeFeed:
    """One tracking connection: `open`, then `names()` until it raises; `close` at the end."""

    def __init__(self, client: aioredis.Redis, prefix: bytes, timeout: float) -> None:
        """`client`: the service's client, whose connection settings (address, TLS, user, password) are reused;
        `timeout`: seconds for each setup command and for a ping's reply."""
        self._client = client
        self._prefix = prefix
        self._timeout = timeout
        self._connection: Any = None
        self._last_heard = 0.0
        self._pinger: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connect and start tracking. Raises FeedRefused when Redis refuses the commands, and the client's
        errors (ConnectionError, TimeoutError) when it cannot be reached."""
        pool = self._client.connection_pool
        # no socket timeout: the connection waits for announcements as long as there are none (pings tell
        # whether it is alive); the connect itself is still bounded
        kwargs = {**pool.connection_kwargs, "socket_timeout": None, "protocol": 2}
        kwargs.pop("retry", None)
        connection = pool.connection_class(**kwargs)
        self._connection = connection
        try:
            await asyncio.wait_for(connection.connect(), self._timeout)  # type: ignore[no-untyped-call]
            own_id = await self._call("CLIENT", "ID")
            tracking: list[Any] = ["CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST"]
            if self._prefix:
                tracking += ["PREFIX", self._prefix]
            await self._call(*tracking)
            reply = await self._call("SUBSCRIBE", CHANNEL)
            if not (isinstance(reply, list) and reply[:2] == [b"subscribe", CHANNEL]):
                raise FeedRefused(f"SUBSCRIBE {CHANNEL.decode()} answered {reply!r}")
        except redis.exceptions.ResponseError as exc:
            await self.close()
            raise FeedRefused(str(exc)) from exc
        except BaseException:
            await self.close()
            raise
        self._last_heard = time.monotonic()
        self._pinger = asyncio.create_task(self._ping())

    async def _call(self, *args: Any) -> Any:
        await self._connection.send_command(*args)
        reply = await asyncio.wait_for(self._connection.read_response(), self._timeout)
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    async def names(self) -> list[bytes] | None:
        """The next announcement: the names of the keys that changed, or EVERYTHING. Raises the client's
        ConnectionError when the connection is lost or stops answering."""
        while True:
            message = await self._connection.read_response()
            self._last_heard = time.monotonic()
            if isinstance(message, list) and len(message) == 3 and message[0] == b"message" and message[1] == CHANNEL:
                names = message[2]
                return EVERYTHING if names is None else list(names)
            # anything else is the reply to a ping ([b"pong", b""]): the connection is alive

    async def _ping(self) -> None:
        # Without traffic, a dead peer (a server gone without a word, a cut network) would leave names() waiting
        # for ever: ping when quiet, and close the connection when even the ping goes unanswered, which ends
        # names() with ConnectionError.
        while True:
            await asyncio.sleep(PING_SECONDS / 5)
            quiet = time.monotonic() - self._last_heard
            if quiet >= PING_SECONDS + self._timeout:
                logger.warning("change feed: no reply from Redis for %.1f s; reconnecting", quiet)
                await self._connection.disconnect()
                return
            if quiet >= PING_SECONDS:
                try:
                    await self._connection.send_command("PING")
                except (redis.exceptions.ConnectionError, OSError):
                    return  # names() sees the same failure

    async def close(self) -> None:
        pinger, self._pinger = self._pinger, None
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.disconnect(nowait=True)  # no wait for the peer: it may be gone or hung
