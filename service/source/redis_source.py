"""The Redis side: a client from the URL, paged SCAN that also tells each key's expiry and length, and value
fetches that skip unchanged values and are bounded in bytes."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

logger = logging.getLogger("service.source.redis_source")
T = TypeVar("T")

# PEXPIRETIME never answers -3, so it marks a key of another Redis type (STRLEN raised WRONGTYPE).
MISSING = -2
NO_EXPIRY = -1
WRONG_TYPE = -3
# A lookup's key that this node does not serve (a cluster's slot that moved or is moving): its node must be asked.
NOT_HERE = -4

# One round trip per SCAN page: the page's cursor and Redis' clock, then each key of the page with its absolute
# expiry time (ms) and length; a key of another type is reported (-3), not an error that fails the page. The
# reply is a few bytes per key whatever the values weigh: it tells which values are worth reading (a producer
# rewrite, SET EX, always moves the expiry) and how to group them so that no MGET reads more than the byte
# bound. Redis does the work of SCAN plus two lookups per key.
# On Redis 6, which has no PEXPIRETIME, the expiry comes from PTTL and the clock (a millisecond of rounding
# then costs a re-read now and then).
_KEY_LUA = """
local function elsewhere(reply)
  -- a key of a slot this cluster node does not serve (moved, or moving and already gone): its node must be asked
  return type(reply) == 'table' and reply.err ~= nil and string.find(reply.err, 'non local', 1, true) ~= nil
end
local function describe(out, now_ms, keys, budget)
  -- budget: also each value, while the values read so far stay within this many bytes (one value at least);
  -- false for a value not read (past the budget, gone, or of another type)
  local expiretime = true
  local used = 0
  for _, key in ipairs(keys) do
    local value = false
    local at = nil
    if budget and used < budget then
      -- the value first: its reply says whether the key is there and a string, and how long it is (the change
      -- feed's keys have mostly changed, so reading them is the point)
      value = redis.pcall('GET', key)
      if elsewhere(value) then
        at = -4
        value = false
      elseif type(value) == 'table' then
        value = false  -- another type: told below
      elseif value then
        if used > 0 and used + #value > budget then
          value = false  -- past the budget: read by the caller in bounded fetches
        else
          used = used + #value
        end
      end
    end
    if at == nil and expiretime then
      at = redis.pcall('PEXPIRETIME', key)
      if elsewhere(at) then
        at = -4
      elseif type(at) == 'table' then
        expiretime, at = false, nil
      end
    end
    if at == nil then
      -- Redis before 7.0 has no PEXPIRETIME: the same instant from the TTL, give or take a millisecond
      at = redis.pcall('PTTL', key)
      if elsewhere(at) then
        at = -4
      elseif type(at) == 'table' then
        return at  -- fails the call, as redis.call would
      elseif at >= 0 then
        at = now_ms + at
      end
    end
    local size = 0
    if value then
      size = #value
    elseif at ~= -2 and at ~= -4 then
      size = redis.pcall('STRLEN', key)
      if type(size) == 'table' then
        at, size = -3, 0
      end
    end
    out[#out + 1] = key
    out[#out + 1] = at
    out[#out + 1] = size
    if budget then
      out[#out + 1] = value
    end
  end
  return out
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
"""
_SCAN_LUA = (
    _KEY_LUA
    + """
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
return describe({page[1], now_ms}, now_ms, page[2], false)
"""
)
# The same description of keys named by the change feed (service.source.change_feed), the keys as KEYS, with their
# values up to ARGV[1] bytes: a batch of the feed is one round trip, the values consistent with their expiry.
_LOOKUP_LUA = (
    _KEY_LUA
    + """
return describe({'0', now_ms}, now_ms, KEYS, tonumber(ARGV[1]))
"""
)
# The same with the keys after the budget in ARGV: on a cluster node, keys of several slots (a script's KEYS must
# share one); a key the node does not serve is told (NOT_HERE), not an error that fails the call.
_LOOKUP_ARGV_LUA = (
    _KEY_LUA
    + """
local keys = {}
for i = 2, #ARGV do keys[#keys + 1] = ARGV[i] end
return describe({'0', now_ms}, now_ms, keys, tonumber(ARGV[1]))
"""
)


# Values of keys of several hash slots on one cluster node (MGET refuses them): the keys in ARGV, each value in
# order, nil for a key gone or of another type, -1 for a key this node does not serve (its slot moved).
_GET_ARGV_LUA = """
local out = {}
for i, key in ipairs(ARGV) do
  local value = redis.pcall('GET', key)
  if type(value) == 'table' then
    if value.err ~= nil and string.find(value.err, 'non local', 1, true) ~= nil then value = -1 else value = false end
  end
  out[i] = value
end
return out
"""
NOT_HERE_VALUE = -1


class KeyMeta(NamedTuple):
    """A key as its SCAN page saw it."""

    key: bytes
    expire_at: int  # absolute expiry, epoch ms on Redis' clock; NO_EXPIRY, MISSING, WRONG_TYPE
    size: int  # bytes of the value (0: missing or another type)
    pttl: int  # ms left; NO_EXPIRY, MISSING, WRONG_TYPE


class ScanPage(NamedTuple):
    now_ms: int  # Redis' clock when the page was read
    keys: list[bytes]  # possibly empty, possibly repeating keys of earlier pages
    expire_ats: list[int]
    sizes: list[int]

    def metas(self) -> list[KeyMeta]:
        now = self.now_ms
        return [
            KeyMeta(key, at, size, at if at < 0 else max(at - now, 0))
            for key, at, size in zip(self.keys, self.expire_ats, self.sizes, strict=True)
        ]


def _pack(args: tuple[bytes, ...]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args])


# A command that fails with a connection error (the server restarted, closed its idle clients, reached maxclients,
# or the connection was killed) is sent again on a fresh connection, after a short, growing pause: the first
# refresh after such an event succeeds instead of failing on a connection the pool still held. A timeout is never
# retried: it already took redis_timeout.
_RETRIES = 2
_BACKOFF_BASE, _BACKOFF_CAP = 0.01, 0.25  # s
# A connection idle this long is checked with a PING before it is used again.
HEALTH_CHECK_SECONDS = 30


RETRIED = (redis.exceptions.ConnectionError,)


def reconnecting() -> Retry:
    """What is retried (`RETRIED`), how often and after what pause: the client's and RedisSource's alike."""
    return Retry(ExponentialBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE), _RETRIES, supported_errors=RETRIED)


async def _ignore(error: Exception) -> None:
    # what Retry calls between attempts; the failed connection was dropped already
    return None


@dataclass(slots=True)
class NodeStats:
    """One Redis node as the service saw it: its last complete SCAN and its failures (cache-stats, metrics)."""

    node: str  # host:port (or the socket's path)
    pages: int = 0  # SCAN replies of the last complete walk of this node
    keys: int = 0  # keys they held (repeats included)
    duration_ms: float = 0.0  # from its first SCAN call to its last reply
    errors: int = 0  # calls to it that failed, since the start

    def shape(self) -> dict[str, int | float | str]:
        return {"node": self.node, "pages": self.pages, "keys": self.keys, "durationMs": self.duration_ms,
                "errors": self.errors}  # fmt: skip


def node_name(client: aioredis.Redis) -> str:
    """The address a client's connections go to, as `host:port` (a unix socket: its path)."""
    options = client.connection_pool.connection_kwargs
    if "path" in options:
        return str(options["path"])
    return f"{options.get('host', '?')}:{options.get('port', '?')}"


async def _one_reply(connection: Any, args: tuple[bytes, ...]) -> Any:
    await connection.send_packed_command(_pack(args), check_health=False)
    return await connection.read_response()


async def _replies_to_gets(connection: Any, keys: list[bytes]) -> tuple[list[bytes | int | None], Exception | None]:
    """One GET per key, sent at once, and every reply read (the connection stays in step): the values, NOT_HERE_VALUE
    for MOVED and ASK, None for a key gone or of another type; and the first CLUSTERDOWN or TRYAGAIN met."""
    values: list[bytes | int | None] = []
    failure: Exception | None = None
    await connection.send_packed_command(b"".join([_pack((b"GET", key)) for key in keys]), check_health=False)
    # one bound for all the replies: a bound per reply cost more than Redis took to answer it
    async with asyncio.timeout(connection.socket_timeout):
        for _ in keys:
            try:
                values.append(await connection.read_response(timeout=math.inf))
            except redis.exceptions.AskError:  # MOVED too (a subclass): the key's slot is elsewhere
                values.append(NOT_HERE_VALUE)
            except (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError) as exc:
                values.append(None)
                failure = failure or exc
            except redis.exceptions.ResponseError:  # WRONGTYPE: a key of another type
                values.append(None)
    return values, failure


class RedisSource:
    """Paged SCAN and bounded value fetches over one client (one server, or one node of a cluster)."""

    def __init__(self, client: aioredis.Redis, *, fetch_max_bytes: int, name: str | None = None) -> None:
        """`name`: the node's address in the statistics (default: the client's)."""
        self.client = client
        # whether the connections speak TLS: a failure to connect is then most often a handshake that failed
        self.tls = issubclass(client.connection_pool.connection_class, aioredis.SSLConnection)
        self._retry = reconnecting()
        self._fetch_max_bytes = fetch_max_bytes
        self._scan_sha = client.register_script(_SCAN_LUA).sha
        self._lookup_sha = client.register_script(_LOOKUP_LUA).sha
        self._lookup_argv_sha = client.register_script(_LOOKUP_ARGV_LUA).sha
        self._get_argv_sha = client.register_script(_GET_ARGV_LUA).sha
        self.stats = NodeStats(name or node_name(client))

    rewalks = failovers = 0  # a cluster's (service.source.cluster_source)

    def nodes(self) -> list[NodeStats]:
        """Each node's statistics: here, the one (a Sentinel's master: where the pool found it last)."""
        master = getattr(self.client.connection_pool, "master_address", None)
        if master:
            self.stats.node = f"{master[0]}:{master[1]}"
        return [self.stats]

    async def aclose(self) -> None:
        """Nothing to close: the client is the caller's."""

    # the lookup script with its keys as KEYS (one slot's, on a cluster): what service.source.cluster_source sends
    # through the cluster client for a key whose slot moved
    LOOKUP_SCRIPT = _LOOKUP_LUA

    async def command(self, *args: bytes) -> Any:
        """One command, its reply as Redis sent it (no reply callback), retried as the fetches are."""
        return await self._command(*args)

    async def _command(self, *args: bytes) -> Any:
        """One command on a pooled connection, packed here rather than by the client, sent again on a fresh
        connection after a connection error (as the client's own commands are).

        The fetch commands carry hundreds of arguments that are bytes already; the client's general packing
        and dispatch cost more than Redis took to answer (docs/performance.md). Errors are the client's own
        (ConnectionError, TimeoutError, ResponseError); the connection is dropped after one."""
        return await self._retried(lambda: self._on_connection(functools.partial(_one_reply, args=args)))

    async def _retried(self, once: Callable[[], Awaitable[T]]) -> T:
        """`once`, called again after a connection error (reconnecting()); its failures counted in the stats."""
        try:
            return await self._retry.call_with_retry(once, _ignore)
        except redis.exceptions.NoScriptError:
            raise  # a script to load (first use, a restarted server): the caller does, no failure
        except Exception:
            self.stats.errors += 1
            raise

    async def _on_connection(self, exchange: Callable[[Any], Awaitable[T]]) -> T:
        """`exchange` on a pooled connection, which is dropped if it fails (a reply may be left unread)."""
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            return await exchange(connection)
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _scan_call(self, cursor: bytes, pattern: bytes, count: bytes) -> list[Any]:
        # through the client (a few arguments: its packing costs little here, unlike for the MGETs)
        try:
            reply: list[Any] = await self.client.evalsha(self._scan_sha, 0, cursor, pattern, count)
        except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it again
            await self.client.script_load(_SCAN_LUA)
            reply = await self.client.evalsha(self._scan_sha, 0, cursor, pattern, count)
        return reply

    async def lookup(self, keys: list[bytes], *, several_slots: bool = False) -> tuple[ScanPage, list[bytes | None]]:
        """Each of `keys` with its expiry time and length, as a SCAN page would tell them, and its value while the
        values stay within `fetch_max_bytes` (None: not read, gone, or of another type; `read` the rest), in one
        round trip.

        `several_slots`: the keys go to the script as arguments, not as its KEYS (a cluster node refuses KEYS of
        several slots); a key the node does not serve is then told as NOT_HERE."""
        budget = b"%d" % self._fetch_max_bytes
        if several_slots:
            sha, script = self._lookup_argv_sha, _LOOKUP_ARGV_LUA
            args: tuple[bytes, ...] = (sha.encode(), b"0", budget, *keys)
        else:
            sha, script = self._lookup_sha, _LOOKUP_LUA
            args = (sha.encode(), b"%d" % len(keys), *keys, budget)
        try:
            reply = await self._command(b"EVALSHA", *args)
        except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it again
            await self.client.script_load(script)
            reply = await self._command(b"EVALSHA", *args)
        values = [value if isinstance(value, bytes) else None for value in reply[5::4]]
        return ScanPage(int(reply[1]), reply[2::4], reply[3::4], reply[4::4]), values

    async def swapdb_calls(self) -> int | None:
        """How many SWAPDB commands Redis has run (INFO commandstats), None when it will not say: client tracking
        announces no SWAPDB (Redis 7.0), so the change feed watches this count instead."""
        try:
            stats = await self.client.info("commandstats")
        except redis.exceptions.ResponseError:  # INFO denied (ACL) or renamed away
            return None
        entry = stats.get("cmdstat_swapdb")
        return int(entry["calls"]) if isinstance(entry, dict) else 0

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def scan_pages(self, pattern: str, count: int) -> AsyncGenerator[ScanPage, None]:
        """Each SCAN page with each key's expiry time and length, in one round trip per page.

        The first call goes through the client (which loads the script into a Redis that lacks it); the next ones
        go over one connection of the pool, each sent before the page before it is handed on, so that Redis
        walks the next page while this process handles the last: one call in flight at most, never a pipeline.
        Close the iterator (`aclosing`) when leaving it early: that drops the connection of a call in flight."""
        match, batch = pattern.encode(), b"%d" % count
        started = time.perf_counter()
        pages = keys = 0
        try:
            reply = await self._scan_call(b"0", match, batch)
        except Exception:
            self.stats.errors += 1
            raise
        pool = self.client.connection_pool
        connection: Any = None
        in_flight = False
        try:
            while True:
                cursor = reply[0]
                if cursor != b"0":
                    if connection is None:
                        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                    await self._send_scan(connection, cursor, match, batch)
                    in_flight = True
                page = ScanPage(int(reply[1]), reply[2::3], reply[3::3], reply[4::3])
                pages += 1
                keys += len(page.keys)
                yield page
                if not in_flight:
                    stats = self.stats
                    stats.pages, stats.keys = pages, keys
                    stats.duration_ms = round((time.perf_counter() - started) * 1000, 3)
                    return
                try:
                    reply = await connection.read_response()
                except redis.exceptions.NoScriptError:  # the scripts were flushed since the first page
                    await self.client.script_load(_SCAN_LUA)
                    await self._send_scan(connection, cursor, match, batch)
                    reply = await connection.read_response()
                in_flight = False
        except Exception:
            self.stats.errors += 1
            raise
        finally:
            if connection is not None:
                if in_flight:  # left early, or failed: a reply that nobody will read must not reach the next user
                    await connection.disconnect()
                await pool.release(connection)

    async def _send_scan(self, connection: Any, cursor: bytes, match: bytes, batch: bytes) -> None:
        # send_packed_command returns once the call is written to the socket (which client.evalsha does only two
        # loop turns after it is started: too late to overlap anything)
        packed = _pack((b"EVALSHA", self._scan_sha.encode(), b"0", cursor, match, batch))
        await connection.send_packed_command(packed, check_health=False)

    async def read_several_slots(self, keys: list[bytes]) -> list[bytes | int | None]:
        """The values of `keys` on this cluster node, in one call (MGET refuses keys of several slots): None for a
        key gone or of another type, NOT_HERE_VALUE for a key the node does not serve."""
        args = (self._get_argv_sha.encode(), b"0", *keys)
        try:
            reply: list[bytes | int | None] = await self._command(b"EVALSHA", *args)
        except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it again
            await self.client.script_load(_GET_ARGV_LUA)
            reply = await self._command(b"EVALSHA", *args)
        return reply

    async def get_each(self, keys: list[bytes]) -> list[bytes | int | None]:
        """The values of `keys` on this cluster node by one GET each, sent at once on one connection (Redis takes
        plain GETs for about half the CPU of the same reads in a script): None for a key gone or of another type,
        NOT_HERE_VALUE for a key the node does not serve (MOVED, ASK). A node that cannot serve now (CLUSTERDOWN,
        TRYAGAIN) raises its error once every reply is read, so that the connection stays usable."""
        return await self._retried(lambda: self._get_each_once(keys))

    async def _get_each_once(self, keys: list[bytes]) -> list[bytes | int | None]:
        values, failure = await self._on_connection(functools.partial(_replies_to_gets, keys=keys))
        if failure is not None:
            raise failure
        return values

    async def read(self, metas: list[KeyMeta]) -> list[bytes | None]:
        """The values of the keys of `metas`, in order (None: expired since SCAN, or of another type by now).

        MGETs of at most `fetch_max_bytes` each by the sizes SCAN saw (one value when it alone is larger), sent
        one after another, never pipelined (Redis would run a pipeline's commands back to back): no single call
        holds Redis long, however large the values."""
        values: list[bytes | None] = []
        limit = self._fetch_max_bytes
        group: list[bytes] = []
        used = 0
        for meta in [*metas, None]:  # None: the end, flushes the last group
            size = limit if meta is None else meta.size
            if group and (meta is None or used + size > limit):
                reply = await self._command(b"MGET", *group)
                values.extend(value if isinstance(value, bytes) else None for value in reply)
                group, used = [], 0
            if meta is not None:
                group.append(meta.key)
                used += size
        return values
