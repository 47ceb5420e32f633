"""The refreshes and CPython's cyclic collector.

What a scan or a change feed's batch makes forms no cycles and lives until a later one replaces it; reference
counting frees it then. The collector's walks over it are pure cost, paid on the refreshes' thread between the
reads of a batch. So a first scan runs with the collector paused, young collections run less often while a
refresher runs, and what survives is frozen (docs/performance.md)."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator

# Tracked objects allocated, net of those freed, before a young collection (CPython's default is 700). At a large
# keyspace a batch of the change feed crossed 700 several times: each young collection walked what the young
# objects refer to, among them the batch's new index and group tuples (tens of thousands of references, a cache
# miss each), and every tenth one the second generation too. Most of a batch's objects are freed before the count
# reaches this; what survives is collected and frozen by `settle` at least once a second instead.
YOUNG_THRESHOLD = 20_000
# Full scans between two full collections of the frozen heap: five minutes at the default interval without the
# change feed.
THAW_EVERY = 150
# Batches freeze what they leave behind at most this often: a young collection each time.
SETTLE_SECONDS = 1.0

_lock = threading.Lock()
_holders = 0  # refreshers running, which share the process's one collector
_saved: tuple[int, int, int] | None = None  # the thresholds before the first of them raised the young one


def raise_young_threshold() -> None:
    """While a refresher runs (`lower_young_threshold` when it stops): young collections at YOUNG_THRESHOLD, unless
    the process asked for a higher one itself."""
    global _holders, _saved
    with _lock:
        _holders += 1
        if _holders == 1:
            _saved = gc.get_threshold()
            if _saved[0] < YOUNG_THRESHOLD:
                gc.set_threshold(YOUNG_THRESHOLD, *_saved[1:])


def lower_young_threshold() -> None:
    """The thresholds as they were before the first running refresher raised them, once the last one stops."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            _saved = None


@contextlib.contextmanager
def paused(pause: bool) -> Iterator[None]:
    """The collector paused while the block runs, when `pause` and it is enabled. A first scan creates a million
    long-lived objects, and each full collection walked them all again: paused, a cold refresh is markedly faster.
    Later scans make few lasting objects; pausing for those only piles them up for one long collection after."""
    pausing = pause and gc.isenabled()
    if pausing:
        gc.disable()
    try:
        yield
    finally:
        if pausing:
            gc.enable()


class Settler:
    """Freezes what survives a refresh or a batch, so that no full collection walks it again. Cyclic garbage
    frozen with it would never be freed: the young generations are collected first (cheap), and with `thaw`
    everything is thawed and collected once, one full pass every THAW_EVERY full scans instead of a leak."""

    def __init__(self) -> None:
        self.settled = 0.0  # monotonic, when the heap was last frozen

    def settle(self, thaw: bool = False) -> None:
        if thaw:
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)
        gc.freeze()
        self.settled = time.monotonic()

    def settle_if_due(self) -> None:
        """After a batch: settle when the last time is SETTLE_SECONDS ago."""
        if time.monotonic() - self.settled >= SETTLE_SECONDS:
            self.settle()
