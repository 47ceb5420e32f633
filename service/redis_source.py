"""The Redis side: a client from the URL, paged SCAN, and value fetches that skip unchanged values and are bounded
in bytes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from service.settings import Settings

logger = logging.getLogger("service.redis_source")

# PEXPIRETIME never answers -3, so it marks a key of another Redis type (STRLEN raised WRONGTYPE).
MISSING = -2
NO_EXPIRY = -1
WRONG_TYPE = -3

# Step one of a fetch, one round trip per page: Redis' clock, then each key's absolute expiry time (ms) and
# length, with a key of another type reported instead of failing the whole page. The reply is a few bytes per
# key whatever the values weigh; it tells which values are worth reading (a producer rewrite, SET EX, always
# moves the expiry) and how to group them so that no MGET reads more than the byte bound. ARGV[i] is the
# expiry the caller already knows for KEYS[i] (0: none); when it is still the same, the length is not asked
# for (-1): every call a script makes costs Redis a few microseconds. On Redis 6, which has no PEXPIRETIME,
# the expiry comes from PTTL and the clock (a millisecond of rounding then costs a re-read now and then).
_META_LUA = """
local out = {}
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
out[1] = now_ms
local expiretime = true
for i, key in ipairs(KEYS) do
  local at
  if expiretime then
    at = redis.pcall('PEXPIRETIME', key)
    if type(at) == 'table' then expiretime = false end
  end
  if not expiretime then
    -- Redis before 7.0 has no PEXPIRETIME: the same instant from the TTL, give or take a millisecond
    at = redis.call('PTTL', key)
    if at >= 0 then at = now_ms + at end
  end
  if at > 0 and at == tonumber(ARGV[i]) then
    out[#out + 1] = at
    out[#out + 1] = -1
  elseif at == -2 then
    out[#out + 1] = -2
    out[#out + 1] = 0
  else
    local size = redis.pcall('STRLEN', key)
    if type(size) == 'table' then
      out[#out + 1] = -3
      out[#out + 1] = 0
    else
      out[#out + 1] = at
      out[#out + 1] = size
    end
  end
end
return out
"""


class Fetched(NamedTuple):  # one per key per scan: a named tuple is three times cheaper than a frozen dataclass
    key: bytes
    value: bytes | None  # None: expired, of another type (see pttl), or not read because `unchanged` said so
    pttl: int  # ms left; NO_EXPIRY, MISSING, WRONG_TYPE
    expire_at: int = NO_EXPIRY  # absolute expiry, epoch ms on Redis' clock; NO_EXPIRY, MISSING, WRONG_TYPE
    size: int = 0  # bytes of the value; 0 when unchanged (not asked for)
    unchanged: bool = False  # the expiry is the one the caller knew: the value was not read


# key -> the expiry time the caller saw with the value it holds (0: it holds none)
KnownExpiry = Callable[[bytes], int]


def _pack(args: tuple[bytes, ...]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args])


def create_client(settings: Settings) -> aioredis.Redis:
    """A client for `redis.url` whose every call, and the connect, is bounded by `redis_timeout`."""
    timeout = settings.running_tasks.redis_timeout / 1000
    return aioredis.Redis.from_url(
        settings.redis.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=False,
        # the scan runs `worker_count` fetches at once beside the scanner and live requests
        max_connections=settings.running_tasks.worker_count + 8,
    )


class RedisSource:
    """Paged SCAN and bounded value fetches over one client."""

    def __init__(self, client: aioredis.Redis, *, fetch_max_bytes: int) -> None:
        self.client = client
        self._fetch_max_bytes = fetch_max_bytes
        self._meta: AsyncScript = client.register_script(_META_LUA)
        self._meta_sha = self._meta.sha.encode()

    async def _command(self, *args: bytes) -> Any:
        """One command on a pooled connection, packed here rather than by the client.

        The fetch commands carry hundreds of arguments that are bytes already; the client's general packing
        and dispatch cost more than Redis took to answer (0.66 s of a 2.5 s refresh of 100,000 keys). Errors are
        the client's own (ConnectionError, TimeoutError, ResponseError); the connection is dropped after one."""
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(_pack(args), check_health=False)
            return await connection.read_response()
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _meta_call(self, keys: list[bytes], known: list[bytes]) -> list[int]:
        args = (b"%d" % len(keys), *keys, *known)
        try:
            reply: list[int] = await self._command(b"EVALSHA", self._meta_sha, *args)
        except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it again
            await self.client.script_load(_META_LUA)
            reply = await self._command(b"EVALSHA", self._meta_sha, *args)
        return reply

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def scan_pages(self, pattern: str, count: int) -> AsyncIterator[list[bytes]]:
        """Yield the keys of each SCAN page (possibly empty, possibly repeating keys of earlier pages)."""
        cursor: int = 0
        while True:
            cursor, keys = await self.client.scan(cursor=cursor, match=pattern, count=count)
            yield [key if isinstance(key, bytes) else key.encode() for key in keys]
            if cursor == 0:
                return

    async def fetch(self, keys: list[bytes], known: KnownExpiry | None = None) -> list[Fetched]:
        """Values, TTLs and expiry times of `keys`, in order.

        One small round trip tells each key's expiry and length; a value whose expiry is still the one `known`
        gives is not read (`unchanged`); the others come in MGETs of at most `fetch_max_bytes` each (one value
        when it alone is larger), so that no single call holds Redis long, however large the values."""
        if not keys:
            return []
        expiries = [b"%d" % known(key) for key in keys] if known is not None else [b"0"] * len(keys)
        reply = await self._meta_call(keys, expiries)
        now_ms = int(reply[0])
        metas: list[tuple[int, int]] = [(int(reply[i]), int(reply[i + 1])) for i in range(1, len(reply), 2)]
        wanted = [
            i for i, (expire_at, size) in enumerate(metas) if size >= 0 and expire_at not in (MISSING, WRONG_TYPE)
        ]
        values = await self._read(keys, wanted, metas)
        fetched: list[Fetched] = []
        for index, (key, (expire_at, size)) in enumerate(zip(keys, metas, strict=True)):
            pttl = expire_at if expire_at < 0 else max(expire_at - now_ms, 0)
            fetched.append(Fetched(key, values.get(index), pttl, expire_at, max(size, 0), size < 0))
        return fetched

    async def _read(self, keys: list[bytes], wanted: list[int], metas: list[tuple[int, int]]) -> dict[int, bytes]:
        values: dict[int, bytes] = {}
        limit = self._fetch_max_bytes
        group: list[int] = []
        used = 0
        for index in [*wanted, -1]:  # -1: the end, flushes the last group
            size = metas[index][1] if index >= 0 else limit
            if group and (index < 0 or used + size > limit):
                # Sent one after another, never pipelined: Redis would run a pipeline's commands back to back.
                reply = await self._command(b"MGET", *(keys[i] for i in group))
                for position, value in zip(group, reply, strict=True):
                    if isinstance(value, bytes):  # nil: expired since the first step, or replaced by another type
                        values[position] = value
                group, used = [], 0
            if index >= 0:
                group.append(index)
                used += size
        return values
