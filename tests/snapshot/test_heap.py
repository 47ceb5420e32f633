"""The refreshes' handling of the cyclic collector: the first scan's pause, the settle that freezes what survives."""

from __future__ import annotations

import gc
import weakref

import pytest

from service.snapshot import heap


def test_paused_pauses_only_when_asked_and_enabled() -> None:
    assert gc.isenabled()
    with heap.paused(True):
        assert not gc.isenabled()
    assert gc.isenabled()
    with heap.paused(False):
        assert gc.isenabled()
    gc.disable()
    try:
        with heap.paused(True):
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), heap.paused(True):
        raise RuntimeError("a scan failed")
    assert gc.isenabled()


def test_settle_frees_cyclic_garbage_before_it_freezes() -> None:
    class Cycle:
        me: object

    settler = heap.Settler()
    garbage = Cycle()
    garbage.me = garbage
    alive = weakref.ref(garbage)
    del garbage
    gc.disable()  # only the settle's own collection may free it
    try:
        settler.settle()
        assert alive() is None
        assert gc.get_freeze_count() > 0
        settled = settler.settled
        settler.settle_if_due()  # settled just now: not due
        assert settler.settled == settled
        settler.settled -= heap.SETTLE_SECONDS
        settler.settle_if_due()
        assert settler.settled > settled - heap.SETTLE_SECONDS
    finally:
        gc.enable()
        gc.unfreeze()
