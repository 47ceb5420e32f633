"""A Redis Cluster as one source: SCAN walks every primary at once (SCAN is per node), values are read on the node
redis-py's cluster client names for each key's slot, over that node's own connection (a key whose slot moved is read
again through the cluster client, which follows MOVED and ASK), and the change feed's lookups go to each key's node.
Topology changes during a scan are walked again, never lost: a primary that fails is walked again on the replica
that takes its slots over, and a scan during which slots moved is repeated."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Iterable
from contextlib import aclosing
from typing import Any, Literal

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection

from service.source.redis_source import (
    NOT_HERE,
    NOT_HERE_VALUE,
    KeyMeta,
    NodeStats,
    RedisSource,
    ScanPage,
    reconnecting,
)

logger = logging.getLogger("service.source.cluster_source")

# How values are read from a cluster (python -m bench.cluster measures the four, docs/performance.md): "gets", plain
# GETs sent at once on each node's own connection, for the keys of any slot the client knows that node to serve (a
# key whose slot moved answers MOVED or ASK and is read again through the cluster client); "node", the same in one
# script call per node (one reply, but Redis takes about twice the CPU of plain GETs); "pipeline", redis-py's
# cluster pipeline of GETs; "mget", redis-py's MGET per hash slot (MGET refuses keys of several slots). redis-py's
# routing of the last two cost more per key than Redis took.
ReadMode = Literal["node", "gets", "pipeline", "mget"]
# A scan during which the slots moved is walked again, at most this many times in all; then it is taken as it is
# (the next scan walks again) and the scan's `topology` says so.
_PASSES = 3
_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_REWALK_FIRST, _REWALK_CAP = 0.1, 1.0  # s: the pause before asking again who serves a failed primary's slots
# What a read whose node is gone fails with: tried again while the cluster fails over, for at most _FAILOVER_WAIT s
# (a replica takes over after cluster-node-timeout, 15 s by default, plus an election).
_UNSERVED = (*_CONNECTION_ERRORS, redis.exceptions.ClusterDownError, redis.exceptions.SlotNotCoveredError,
             redis.exceptions.TryAgainError)  # fmt: skip
_FAILOVER_WAIT = 30.0


def _failing_over(exc: BaseException) -> bool:
    """A node that is gone, or one whose cluster is down for a moment (a replica just promoted answers a script with
    "Script attempted to execute a command while the cluster is down", which redis-py does not name)."""
    if isinstance(exc, _UNSERVED):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and "cluster is down" in str(exc)


class Layout:
    """Who serves which slots, as CLUSTER NODES tells it: `moving` while a slot migrates."""

    __slots__ = ("moving", "owners")

    def __init__(self, text: str) -> None:
        owners: set[tuple[str, str]] = set()
        moving = False
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 8 or "master" not in fields[2].split(","):
                continue
            address = fields[1].split("@", 1)[0]
            slots = [field for field in fields[8:] if not field.startswith("[")]
            moving = moving or any(field.startswith("[") for field in fields[8:])
            owners.add((address, " ".join(slots)))
        self.owners = frozenset(owners)
        self.moving = moving

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self.owners == other.owners and self.moving == other.moving

    def __hash__(self) -> int:
        return hash((self.owners, self.moving))


class ClusterSource:
    """Paged SCAN of every primary, reads and lookups routed by slot, over redis-py's cluster client."""

    def __init__(
        self, cluster: RedisCluster, *, fetch_max_bytes: int, max_connections: int, read_mode: ReadMode = "gets"
    ) -> None:
        self.client = cluster
        options = cluster.nodes_manager.connection_kwargs
        self.tls = options.get("connection_class") is SSLConnection or bool(options.get("ssl"))
        self.read_mode: ReadMode = read_mode
        self._fetch_max_bytes = fetch_max_bytes
        self._max_connections = max_connections
        self._sources: dict[str, RedisSource] = {}  # a client of each node's own, for SCAN pages and lookups
        self._walked: list[str] = []  # the nodes the last complete scan walked
        self._topology_lock = asyncio.Lock()
        self.rewalks = 0  # scans walked again because the slots moved meanwhile, since the start
        self.failovers = 0  # nodes that failed during a scan and were walked again on their successor

    # -- nodes -----------------------------------------------------------------------------------------

    async def primaries(self) -> list[ClusterNode]:
        """The primaries as the client knows them (it asks the cluster on first use)."""
        if not self.client.get_primaries():
            await self.client.initialize()
        return self.client.get_primaries()

    async def refresh_topology(self) -> None:
        """Ask the cluster again who serves which slots (after a failure or a move)."""
        async with self._topology_lock:
            await self.client.nodes_manager.initialize()

    def node_source(self, node: ClusterNode) -> RedisSource:
        """A RedisSource over a client of `node`'s own (the cluster's credentials, TLS and timeouts)."""
        source = self._sources.get(node.name)
        if source is None:
            options = {**node.connection_kwargs, "retry": reconnecting()}
            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class, max_connections=self._max_connections, **options
            )
            client = aioredis.Redis.from_pool(pool)
            source = RedisSource(client, fetch_max_bytes=self._fetch_max_bytes, name=node.name)
            self._sources[node.name] = source
        return source

    def nodes(self) -> list[NodeStats]:
        """The statistics of the nodes the last scan walked (the primaries), then of any other node used since."""
        known = [self._sources[name].stats for name in self._walked if name in self._sources]
        return known + [source.stats for name, source in self._sources.items() if name not in self._walked]

    async def aclose(self) -> None:
        """Close the nodes' own clients (not the cluster client, which the caller owns)."""
        sources, self._sources = self._sources, {}
        for source in sources.values():
            await source.client.aclose()

    async def layout(self) -> Layout:
        """Who serves which slots now, asked of the first primary that answers."""
        failure: Exception | None = None
        for node in await self.primaries():
            try:
                text = await self.node_source(node).command(b"CLUSTER", b"NODES")
            except _CONNECTION_ERRORS as exc:
                failure = exc
                continue
            return Layout(text.decode() if isinstance(text, bytes) else str(text))
        raise failure or redis.exceptions.ConnectionError("no cluster node answered CLUSTER NODES")

    # -- the scan --------------------------------------------------------------------------------------

    async def scan_pages(self, pattern: str, count: int) -> AsyncGenerator[ScanPage, None]:
        """Every primary's SCAN pages, the primaries walked at once, pages handed on as they come. When the slots
        moved during the walk (a migration, a failover), every primary is walked again: keys seen twice are the
        scanner's duplicates, and a key that moved between two nodes' walks is found by the second walk."""
        for walk in range(_PASSES):
            before = await self.layout()
            primaries = await self.primaries()
            queue: asyncio.Queue[ScanPage | BaseException | None] = asyncio.Queue(maxsize=2 * len(primaries))
            walks = [asyncio.create_task(self._walk(node, pattern, count, queue)) for node in primaries]
            try:
                done = 0
                while done < len(walks):
                    item = await queue.get()
                    if item is None:
                        done += 1
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        yield item
            finally:
                for task in walks:
                    task.cancel()
                await asyncio.gather(*walks, return_exceptions=True)
            self._walked = [node.name for node in primaries]
            after = await self.layout()
            if after == before and not after.moving:
                return
            if walk + 1 < _PASSES:
                self.rewalks += 1
                logger.info("cluster: the slots moved during the scan; walking every primary again")
                await self.refresh_topology()
        logger.warning("cluster: the slots kept moving during %d walks; the next scan walks again", _PASSES)

    async def _walk(
        self, node: ClusterNode, pattern: str, count: int, queue: asyncio.Queue[ScanPage | BaseException | None]
    ) -> None:
        """One primary's pages into `queue`, then None; its error instead when it fails otherwise than by going
        away. A primary that goes away is walked again from the start on the node that serves its slots next (its
        replica, once promoted), until the scan's budget runs out."""
        slot = self._a_slot_of(node)
        pause = _REWALK_FIRST
        try:
            while True:
                try:
                    async with aclosing(self.node_source(node).scan_pages(pattern, count)) as pages:
                        async for page in pages:
                            await queue.put(page)
                    break
                except (*_CONNECTION_ERRORS, redis.exceptions.ResponseError) as exc:
                    if slot is None or not _failing_over(exc):
                        raise
                    level = logging.WARNING if pause == _REWALK_FIRST else logging.DEBUG  # once per failure
                    logger.log(
                        level, "cluster: node %s failed during the scan (%s); waiting for its successor", node.name, exc
                    )
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, _REWALK_CAP)
                    node = await self._serving(slot, node)
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)

    def _a_slot_of(self, node: ClusterNode) -> int | None:
        for slot, nodes in self.client.nodes_manager.slots_cache.items():
            if nodes and nodes[0].name == node.name:
                return slot
        return None

    async def _serving(self, slot: int, failed: ClusterNode) -> ClusterNode:
        """The primary serving `slot` now, as the cluster tells it (the failed one until a replica takes over)."""
        try:
            await self.refresh_topology()
        except (*_CONNECTION_ERRORS, redis.exceptions.RedisClusterException) as exc:
            logger.debug("cluster: topology refresh failed: %s", exc)
            return failed
        nodes = self.client.nodes_manager.slots_cache.get(slot)
        if not nodes:
            return failed
        if nodes[0].name != failed.name:
            self.failovers += 1
            logger.warning("cluster: %s now serves the slots of %s; walking it", nodes[0].name, failed.name)
        return nodes[0]

    # -- values ----------------------------------------------------------------------------------------

    async def read(self, metas: list[KeyMeta]) -> list[bytes | None]:
        """The values of `metas`' keys, in order (None: gone, or of another type), in groups of at most
        `fetch_max_bytes` by the sizes SCAN saw; each group read on every node it spans at once."""
        values: list[bytes | None] = []
        for group in self._groups(metas):
            values.extend(await self._read_group(group))
        return values

    async def _read_group(self, group: list[bytes]) -> list[bytes | None]:
        # A node that fails (killed, failing over) fails the group; it is read again once the cluster names the
        # node that serves those slots now, for at most _FAILOVER_WAIT (the scan's own budget may end it sooner).
        deadline = asyncio.get_running_loop().time() + _FAILOVER_WAIT
        pause = _REWALK_FIRST
        while True:
            try:
                if self.read_mode in ("node", "gets"):
                    return await self._read_on_nodes(group)
                return await self._read_routed(group, self.read_mode)
            except (*_UNSERVED, redis.exceptions.ResponseError) as exc:
                if not _failing_over(exc) or asyncio.get_running_loop().time() + pause > deadline:
                    raise
                logger.info("cluster: a read failed (%s); reading again once the slots are served", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _REWALK_CAP)
                with contextlib.suppress(*_UNSERVED):
                    await self.refresh_topology()

    async def _read_routed(self, group: list[bytes], mode: ReadMode) -> list[bytes | None]:
        """Through redis-py's cluster client, which routes each key to its slot's node and follows MOVED and ASK."""
        if mode == "mget":
            replies: list[Any] = await self.client.mget_nonatomic(group)
        else:
            pipe = self.client.pipeline(transaction=False)
            for key in group:
                pipe.execute_command("GET", key)
            replies = await pipe.execute(raise_on_error=False)
        failed = next((reply for reply in replies if isinstance(reply, _UNSERVED)), None)
        if failed is not None:
            raise failed
        return [value if isinstance(value, bytes) else None for value in replies]

    async def _read_on_nodes(self, group: list[bytes]) -> list[bytes | None]:
        """One call per node the keys' slots are on, the nodes at once; keys whose slot moved, routed."""
        by_node = self._by_node(group, range(len(group)))
        replies = await asyncio.gather(
            *(self._read_node(node, [group[i] for i in places]) for node, places in by_node.values())
        )
        values: list[bytes | None] = [None] * len(group)
        moved: list[int] = []
        for (_, places), read in zip(by_node.values(), replies, strict=True):
            for place, value in zip(places, read, strict=True):
                if value == NOT_HERE_VALUE:
                    moved.append(place)
                else:
                    values[place] = value if isinstance(value, bytes) else None
        if moved:
            for place, value in zip(moved, await self._read_routed([group[i] for i in moved], "pipeline"), strict=True):
                values[place] = value
        return values

    def _read_node(self, node: ClusterNode, keys: list[bytes]) -> Awaitable[list[bytes | int | None]]:
        source = self.node_source(node)
        return source.get_each(keys) if self.read_mode == "gets" else source.read_several_slots(keys)

    def _by_node(self, keys: list[bytes], places: Iterable[int]) -> dict[str, tuple[ClusterNode, list[int]]]:
        """The places of `keys` grouped by the node the client knows for their slot."""
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for place in places:
            node = self.client.get_node_from_key(keys[place])  # type: ignore[arg-type]
            if node is None:
                raise redis.exceptions.ConnectionError(f"no node serves the slot of {keys[place]!r}")
            by_node.setdefault(node.name, (node, []))[1].append(place)
        return by_node

    def _groups(self, metas: list[KeyMeta]) -> Iterable[list[bytes]]:
        limit = self._fetch_max_bytes
        group: list[bytes] = []
        used = 0
        for meta in metas:
            if group and used + meta.size > limit:
                yield group
                group, used = [], 0
            group.append(meta.key)
            used += meta.size
        if group:
            yield group

    async def lookup(self, keys: list[bytes]) -> tuple[ScanPage, list[bytes | None]]:
        """Each key described on its node, the nodes asked at once (one call each). Keys whose slot moved since the
        client last looked are asked again of their node once the client has asked the cluster; a key whose slot is
        still moving, through the cluster client, which follows ASK."""
        if not self.client.get_primaries():
            await self.client.initialize()
        now_ms = 0
        expire_ats = [0] * len(keys)
        sizes = [0] * len(keys)
        values: list[bytes | None] = [None] * len(keys)
        described: list[tuple[int, int, int, int, bytes | None]] = []  # place, node clock, expiry, size, value
        elsewhere = await self._lookup_on_nodes(keys, range(len(keys)), described)
        if elsewhere:
            await self.refresh_topology()
            elsewhere = await self._lookup_on_nodes(keys, elsewhere, described)
        for place in elsewhere:  # one at a time: the client's connections to a node are bounded
            described.append((place, *await self._routed_lookup(keys[place])))
        now_ms = max((clock for _, clock, _, _, _ in described), default=0)
        for place, clock, at, size, value in described:
            # each node's expiry times on one clock: the time left is what counts
            expire_ats[place] = at + (now_ms - clock) if at >= 0 else at
            sizes[place] = size
            values[place] = value
        return ScanPage(now_ms, list(keys), expire_ats, sizes), values

    async def _lookup_on_nodes(
        self, keys: list[bytes], places: Iterable[int], described: list[tuple[int, int, int, int, bytes | None]]
    ) -> list[int]:
        """Describe the keys at `places` on the nodes the client knows for them, into `described`; the places of
        the keys their node says it does not serve."""
        by_node = self._by_node(keys, places)
        replies = await asyncio.gather(
            *(
                self.node_source(node).lookup([keys[place] for place in node_places], several_slots=True)
                for node, node_places in by_node.values()
            )
        )
        elsewhere: list[int] = []
        for (_, node_places), (page, read) in zip(by_node.values(), replies, strict=True):
            for place, at, size, value in zip(node_places, page.expire_ats, page.sizes, read, strict=True):
                if at == NOT_HERE:
                    elsewhere.append(place)
                else:
                    described.append((place, page.now_ms, at, size, value))
        return elsewhere

    async def _routed_lookup(self, key: bytes) -> tuple[int, int, int, bytes | None]:
        """One key's lookup through the cluster client (the script's one KEY names the slot): its node's clock,
        the key's expiry, length and value."""
        reply: list[Any] = await self.client.eval(RedisSource.LOOKUP_SCRIPT, 1, key, self._fetch_max_bytes)
        value = reply[5]
        return int(reply[1]), int(reply[3]), int(reply[4]), value if isinstance(value, bytes) else None

    # -- health ----------------------------------------------------------------------------------------

    async def ping(self) -> bool:
        """Every primary answers PING."""
        answers = await asyncio.gather(*(self.node_source(node).ping() for node in await self.primaries()))
        return all(answers)

    async def swapdb_calls(self) -> int | None:
        """Always 0 (a cluster refuses SWAPDB), once every primary answers: the change feed's watch also tells a
        cluster that fails while the feed's connections live on."""
        await self.ping()
        return 0
