"""What can go wrong reading Redis, in the service's own words: the kinds of failure the layers above map to
answers (the HTTP layer) and metric labels."""

from __future__ import annotations

from enum import Enum

import redis.exceptions


class ScanTimeout(Exception):
    """The scan went over its `max_scan_time` budget and was abandoned."""


class Failure(Enum):
    """Why a scan gave no snapshot; the value is the `outcome` label of the refresh metrics."""

    TIMEOUT = "timeout"  # over max_scan_time, or a Redis call over redis_timeout
    REDIS_UNAVAILABLE = "redis_unavailable"  # Redis cannot be reached
    INTERNAL = "error"  # anything else


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, ScanTimeout | redis.exceptions.TimeoutError | TimeoutError):
        return Failure.TIMEOUT
    if isinstance(exc, redis.exceptions.ConnectionError | ConnectionError):
        return Failure.REDIS_UNAVAILABLE
    return Failure.INTERNAL
