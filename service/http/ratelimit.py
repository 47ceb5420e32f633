"""Per-client token buckets in bounded memory: `requests_per_second` refill, `burst` capacity."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """A token bucket per client key, kept in least-recently-seen order and capped at `max_clients` buckets.

    A bucket left alone long enough to fill up is the same as a new one, so it is dropped; when more than
    `max_clients` clients are active at once the least recently seen loses its bucket (and so, at worst, is
    granted a fresh burst later): memory stays bounded whatever the number of clients."""

    def __init__(
        self,
        requests_per_second: float,
        burst: int,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests_per_second <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("requests_per_second must be > 0, burst and max_clients >= 1")
        self.rate = requests_per_second
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._refill_seconds = burst / requests_per_second  # an idle bucket is full again after this
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last seen)

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float:
        """Take one request's token: 0.0 when allowed, else the seconds until the client may try again."""
        now = self._clock()
        buckets = self._buckets
        self._drop_idle(now)
        entry = buckets.get(key)
        if entry is None:
            tokens = float(self.burst)
        else:
            tokens = min(float(self.burst), entry[0] + (now - entry[1]) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        buckets[key] = (tokens, now)
        buckets.move_to_end(key)
        while len(buckets) > self.max_clients:
            buckets.popitem(last=False)
        return wait

    def _drop_idle(self, now: float) -> None:
        # Least recently seen first: stop at the first bucket still refilling.
        buckets = self._buckets
        while buckets:
            key, (_, seen) = next(iter(buckets.items()))
            if now - seen < self._refill_seconds:
                return
            del buckets[key]
