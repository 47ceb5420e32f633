"""The refreshes' handling of the cyclic collector: thresholds while refreshers run, the first scan's pause, the
settle that freezes what survives."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import fakeredis
import pytest

from service.snapshot import heap
from service.snapshot.pipeline import build_pipeline
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield gc.get_threshold()
    finally:
        gc.set_threshold(*before)


def test_the_young_threshold_is_raised_while_any_refresher_runs(thresholds: tuple[int, int, int]) -> None:
    heap.raise_young_threshold()
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 10, 10)
    heap.raise_young_threshold()  # a second refresher in the same process
    heap.lower_young_threshold()
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 10, 10)  # the other still runs
    heap.lower_young_threshold()
    assert gc.get_threshold() == thresholds
    heap.lower_young_threshold()  # one stop too many changes nothing
    assert gc.get_threshold() == thresholds


def test_a_higher_threshold_the_process_chose_is_kept(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(heap.YOUNG_THRESHOLD * 2, 20, 5)
    heap.raise_young_threshold()
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD * 2, 20, 5)
    heap.lower_young_threshold()
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD * 2, 20, 5)


async def test_a_refresher_raises_it_from_start_to_stop(thresholds: tuple[int, int, int]) -> None:
    pipeline = build_pipeline(make_settings(), fakeredis.FakeAsyncRedis())
    refresher = pipeline.refresher
    await refresher.stop()  # a stop before any start lowers nothing
    assert gc.get_threshold() == thresholds
    await refresher.start()
    try:
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
        await refresher.start()  # started again: still one holder
    finally:
        await refresher.stop()
    assert gc.get_threshold() == thresholds
    await refresher.stop()
    assert gc.get_threshold() == thresholds


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
