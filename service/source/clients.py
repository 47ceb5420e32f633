"""The Redis client for `[redis]`: one server (standalone), redis-py's cluster client (cluster), or the master that
the Sentinels name (sentinel); TLS files and credentials the same way for all three."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from service.settings import RedisSettings, Settings
from service.source.redis_source import HEALTH_CHECK_SECONDS, RETRIED, reconnecting

try:
    from redis.maint_notifications import MaintNotificationsConfig as _MaintNotificationsConfig
except ImportError:  # redis-py before 8: no maintenance notifications
    _MaintNotificationsConfig = None  # type: ignore[assignment,misc]

# What the service reads Redis with: `RedisCluster` in cluster mode, else a client of one server (the sentinel
# mode's follows the master the Sentinels name).
RedisClient = aioredis.Redis | RedisCluster


def _tls(settings: RedisSettings) -> dict[str, Any]:
    """The TLS settings as redis-py's connection options (on top of any the URL's query gives)."""
    options: dict[str, Any] = {}
    if settings.tls_ca_cert_file:
        options["ssl_ca_certs"] = settings.tls_ca_cert_file
    if settings.tls_cert_file:
        options["ssl_certfile"] = settings.tls_cert_file
        options["ssl_keyfile"] = settings.tls_key_file
    return options


def _common(settings: Settings) -> dict[str, Any]:
    timeout = settings.running_tasks.redis_timeout / 1000
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": False,
        "health_check_interval": HEALTH_CHECK_SECONDS,
    }
    if _MaintNotificationsConfig is not None:
        # Off, whatever the version's default: with redis-py 8.1 and these on "auto", the pool handed out
        # connections the server had already closed, for several refreshes after a restart.
        options["maint_notifications_config"] = _MaintNotificationsConfig(enabled=False)
    return options


def create_client(settings: Settings) -> RedisClient:
    """A client for `[redis]` whose every call, and the connect, is bounded by `redis_timeout`, and whose calls are
    sent again on a fresh connection after a connection error (`reconnecting`)."""
    redis_settings = settings.redis
    # the scan runs `worker_count` fetches at once beside the scanner and live requests (per node in a cluster)
    max_connections = settings.running_tasks.worker_count + 8
    options = {**_common(settings), **_tls(redis_settings), "max_connections": max_connections}
    if redis_settings.mode == "cluster":
        # url: any one node; redis-py asks it for the others and follows MOVED and ASK itself
        return RedisCluster.from_url(redis_settings.url, **options)
    retrying: dict[str, Any] = {"retry": reconnecting(), "retry_on_error": list(RETRIED)}
    if redis_settings.mode == "sentinel":
        return _master_for(redis_settings, {**options, **retrying})
    client: aioredis.Redis = aioredis.Redis.from_url(redis_settings.url, **options, **retrying)
    return client


class _SentinelManagedRedis(aioredis.Redis):
    """The master's client, which also closes its connections to the Sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def _master_for(settings: RedisSettings, options: dict[str, Any]) -> aioredis.Redis:
    """The master `master_name` as the Sentinels name it: each new connection asks them where it is, so that after
    a failover the next connection goes to the new master. From `url`: the scheme (TLS), user, password, database
    and query options; its host is not used."""
    url_options: dict[str, Any] = dict(parse_url(settings.url))
    for name in ("host", "port", "path"):
        url_options.pop(name, None)
    ssl = url_options.pop("connection_class", None) is SSLConnection
    master_options = {**options, **url_options, "ssl": ssl}
    # the Sentinels: the same timeouts and TLS, and credentials of their own (sentinel_username, sentinel_password)
    sentinel_options = {
        name: value
        for name, value in master_options.items()
        if name.startswith("ssl") or name in ("socket_timeout", "socket_connect_timeout", "decode_responses")
    }
    if settings.sentinel_password:
        sentinel_options["password"] = settings.sentinel_password
        if settings.sentinel_username:
            sentinel_options["username"] = settings.sentinel_username
    sentinel = Sentinel(settings.sentinel_addresses(), sentinel_kwargs=sentinel_options)
    client: aioredis.Redis = sentinel.master_for(
        settings.master_name, redis_class=_SentinelManagedRedis, **master_options
    )
    return client
