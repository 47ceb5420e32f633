"""What can go wrong reading Redis, in the service's own words: the kinds of failure the layers above map to
answers (the HTTP layer) and metric labels."""

from __future__ import annotations

import ssl
from enum import Enum

import redis.exceptions
from redis.asyncio.sentinel import MasterNotFoundError

# an ACL user's command refused (NOPERM), as redis-py raises it
_DENIED = redis.exceptions.NoPermissionError
# what redis-py's Sentinel client collects of a Sentinel that refused it (no password, a wrong one) into the
# MasterNotFoundError it raises
_REFUSED_WORDS = ("AuthenticationError", "WRONGPASS", "NOAUTH")


class ScanTimeout(Exception):
    """The scan went over its `max_scan_time` budget and was abandoned."""


class Failure(Enum):
    """Why a scan gave no snapshot; the value is the `outcome` label of the refresh metrics."""

    TIMEOUT = "timeout"  # over max_scan_time, or a Redis call over redis_timeout
    REDIS_UNAVAILABLE = "redis_unavailable"  # Redis cannot be reached
    INTERNAL = "error"  # anything else


def is_refused_access(exc: BaseException) -> bool:
    """Whether Redis refused the service's credentials (a wrong password or user) or an ACL user's command."""
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError | _DENIED):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(("WRONGPASS", "NOAUTH", "NOPERM"))


def classify(exc: BaseException) -> Failure:
    # A connection that cannot be made in time (nothing answers, or a TLS handshake never completes) is an
    # unreachable Redis, like a refused one: 503, not the 504 of a scan or a command that took too long. So is a
    # Redis that refuses our credentials or an ACL user's command: a setting to fix, not a defect of ours.
    if is_connect_timeout(exc) or is_refused_access(exc):
        return Failure.REDIS_UNAVAILABLE
    if isinstance(exc, ScanTimeout | redis.exceptions.TimeoutError | TimeoutError):
        return Failure.TIMEOUT
    if isinstance(exc, redis.exceptions.ConnectionError | ConnectionError):
        return Failure.REDIS_UNAVAILABLE
    return Failure.INTERNAL


def is_connect_timeout(exc: BaseException) -> bool:
    """Whether `exc` is redis-py's timeout of a connection attempt (the connect or its TLS handshake), as opposed
    to a command that took too long on a connection that worked."""
    return isinstance(exc, redis.exceptions.TimeoutError) and str(exc).startswith("Timeout connecting")


def describe(exc: BaseException, tls: bool) -> str:
    """What went wrong, in one line for the log and cache-stats; names the setting to look at when it is one (a
    TLS handshake, credentials, an ACL user's commands, a Sentinel's master)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if str(exc).startswith("NOPERM") or isinstance(exc, redis.exceptions.AuthorizationError | _DENIED):
        return (
            f"{type(exc).__name__}: the ACL user of redis.url may not run a command the service needs ({text}); "
            "grant it the commands the README lists"
        )
    if is_refused_access(exc):
        return f"{type(exc).__name__}: Redis refused the user or password of redis.url ({text})"
    if isinstance(exc, MasterNotFoundError) and any(word in str(exc) for word in _REFUSED_WORDS):
        return (
            f"{type(exc).__name__}: the Sentinels of redis.sentinels refused the credentials given them "
            f"(redis.sentinel_username, redis.sentinel_password) ({text})"
        )
    if isinstance(exc, MasterNotFoundError):
        return f"{type(exc).__name__}: no Sentinel of redis.sentinels names a master for redis.master_name ({text})"
    if _in_chain(exc, FileNotFoundError):
        return f"{type(exc).__name__}: a TLS file of redis.tls_* (or of redis.url's ssl_* options) is gone: {text}"
    if tls and is_connect_timeout(exc):
        return (
            f"{type(exc).__name__}: the TLS handshake did not complete within redis_timeout "
            "(is the port a TLS port? rediss:// needs one; redis:// is for a plain one)"
        )
    if tls and _in_chain(exc, ssl.SSLError):
        return f"{type(exc).__name__}: the TLS handshake failed: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _in_chain(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # a cause chain is short; this bounds a cyclic one
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
