"""The change feed of a Redis Cluster: client tracking is node-local, so one tracking connection per primary
(service.source.change_feed.ChangeFeed each), their announcements merged as they come. When a primary's
connection fails, or the set of primaries changes (a failover, a node added), the whole feed ends like a lost
connection: the follower opens it again on the primaries of the moment and rescans."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.exceptions

from service.source.change_feed import PING_SECONDS, ChangeFeed, FeedRefused
from service.source.cluster_source import ClusterSource

logger = logging.getLogger("service.source.cluster_feed")

# announcements waiting for the follower at most (each a list of names): past it the nodes' readers wait
_QUEUE = 1024
_Item = list[bytes] | None | BaseException


class ClusterFeed:
    """A tracking connection on every primary: `open`, then `names()` until it raises; `close` at the end."""

    def __init__(self, source: ClusterSource, prefix: bytes, timeout: float, check_seconds: float = PING_SECONDS):
        """`check_seconds`: how often the cluster is asked whether its primaries are still the same."""
        self._source = source
        self._prefix = prefix
        self._timeout = timeout
        self._check_seconds = check_seconds
        self._feeds: list[ChangeFeed] = []
        self._primaries: frozenset[str] = frozenset()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        """A tracking connection on every primary of the moment. Raises FeedRefused when a primary refuses the
        commands, and the client's errors when one cannot be reached."""
        with contextlib.suppress(redis.exceptions.RedisError, OSError):  # a refresh that fails: the known topology
            await self._source.refresh_topology()
        primaries = await self._source.primaries()
        self._primaries = frozenset(node.name for node in primaries)
        self._feeds = [
            ChangeFeed(self._source.node_source(node).client, self._prefix, self._timeout) for node in primaries
        ]
        outcomes = await asyncio.gather(*(feed.open() for feed in self._feeds), return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            await self.close()
            refused = [failure for failure in failures if isinstance(failure, FeedRefused)]
            raise (refused or failures)[0]
        self._tasks = [asyncio.create_task(self._read(feed)) for feed in self._feeds]
        self._tasks.append(asyncio.create_task(self._watch()))

    async def _read(self, feed: ChangeFeed) -> None:
        try:
            while True:
                await self._queue.put(await feed.names())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self._queue.put(exc)

    async def _watch(self) -> None:
        # A failover or a node added changes the primaries: their writes would go unannounced until the feed is
        # opened again on them.
        while True:
            await asyncio.sleep(self._check_seconds)
            try:
                await self._source.refresh_topology()
            except (redis.exceptions.RedisError, OSError) as exc:
                logger.debug("change feed: cluster topology check failed: %s", exc)
                continue
            now = frozenset(node.name for node in self._source.client.get_primaries())
            if now != self._primaries:
                await self._queue.put(
                    redis.exceptions.ConnectionError(
                        f"the cluster's primaries changed ({', '.join(sorted(now))}); following them"
                    )
                )
                return

    async def names(self) -> list[bytes] | None:
        """The next announcement of any primary: the names of the keys that changed, or EVERYTHING. Raises the
        client's ConnectionError when a primary's connection is lost or the primaries changed."""
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        feeds, self._feeds = self._feeds, []
        for feed in feeds:
            await feed.close()
        self._queue = asyncio.Queue(maxsize=_QUEUE)
