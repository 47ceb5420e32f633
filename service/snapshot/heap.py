"""The refreshes and CPython's cyclic collector.

What a scan or a change feed's batch makes forms no cycles and lives until a later one replaces it; reference
counting frees it then. The collector's walks over it are pure cost, paid on the refreshes' thread. So a first scan
runs with the collector paused, and what survives is frozen.

CPython's young threshold is left as it is: raised (20,000 tried), a batch's survivors were no longer walked in
the middle of batches, but all of a second's were walked at once by the settle, a stall of 26-55 ms every second
(docs/performance.md)."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

# Full scans between two full collections of the frozen heap: five minutes at the default interval without the
# change feed.
THAW_EVERY = 150
# Batches freeze what they leave behind at most this often: a young collection each time.
SETTLE_SECONDS = 1.0


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
