"""The Redis side: a client from the URL, paged SCAN, and one-round-trip value fetches bounded in bytes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from service.settings import Settings

logger = logging.getLogger("service.redis_source")

# PTTL never answers -3, so it marks a key of another Redis type (GET raised WRONGTYPE).
MISSING = -2
WRONG_TYPE = -3

# One round trip per page: each key's value and remaining TTL, a key of another type reported instead of
# failing the whole page. It stops once ARGV[1] bytes are read so that no single call holds Redis long on
# large values; the caller asks again for the keys it did not get.
_FETCH_LUA = """
local out = {}
local limit = tonumber(ARGV[1])
local used = 0
for _, key in ipairs(KEYS) do
  if used >= limit then break end
  local value = redis.pcall('GET', key)
  if type(value) == 'table' then
    out[#out + 1] = false
    out[#out + 1] = -3
  elseif not value then
    out[#out + 1] = false
    out[#out + 1] = -2
  else
    used = used + string.len(value)
    out[#out + 1] = value
    out[#out + 1] = redis.call('PTTL', key)
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Fetched:
    key: bytes
    value: bytes | None  # None: expired or of another type (see pttl)
    pttl: int  # ms left; -1 no expiry, MISSING, WRONG_TYPE


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
        self._script: AsyncScript = client.register_script(_FETCH_LUA)

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

    async def fetch(self, keys: list[bytes]) -> list[Fetched]:
        """Values and TTLs of `keys`, in order, in as few round trips as the byte bound allows (usually one)."""
        fetched: list[Fetched] = []
        while len(fetched) < len(keys):
            rest = keys[len(fetched) :]
            reply = await self._script(keys=rest, args=[self._fetch_max_bytes])
            for index in range(0, len(reply), 2):
                fetched.append(Fetched(rest[index // 2], reply[index], int(reply[index + 1])))
        return fetched
