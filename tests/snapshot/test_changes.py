"""The change log: what changed from one snapshot to the next, by view identity, held for a bounded number of
generations, with the outcome of each departure."""

from __future__ import annotations

import pytest

from service.domain.tracker import TaskView
from service.snapshot.changes import ChangeLog, ChangeSet
from service.snapshot.snapshot import Snapshot, build_snapshot, update_snapshot
from service.source.scanner import ScanStats

pytestmark = pytest.mark.anyio


def view(task_id: str, progress: int = 0) -> TaskView:
    return TaskView(task_id, "", "processing", progress, 1000, 1000, None, 0, b"[]")


async def build(generation: int, views: list[TaskView], previous: Snapshot | None) -> Snapshot:
    return await build_snapshot(generation, views, ScanStats(), 0, previous, "t")


async def test_a_full_build_is_diffed_by_view_identity_and_removals_carry_their_outcome() -> None:
    log = ChangeLog(10, {"b": "failed"}.get)  # type: ignore[arg-type]
    heard: list[ChangeSet] = []
    log.listeners.append(lambda snapshot, change: heard.append(change))
    a, b, c = view("a"), view("b"), view("c")
    first = await build(1, [a, b], None)
    assert log.record(None, first) is None  # nothing to compare with: the log starts here
    a2 = view("a", 50)
    second = await build(2, [a2, c], first)
    change = log.record(first, second)
    assert change is not None and heard == [change]
    assert (change.base, change.generation) == (1, 2)
    assert {(u.before, u.view) for u in change.upserted} == {(a, a2), (None, c)}
    assert [(r.view, r.outcome) for r in change.removed] == [(b, "failed")]


async def test_a_touched_install_takes_only_the_views_that_changed() -> None:
    log = ChangeLog(10, lambda task_id: "vanished")
    a, b = view("a"), view("b")
    first = await build(1, [a, b], None)
    log.record(None, first)
    b2 = view("b", 10)
    touched = {"a": a, "b": b2, "x": None}  # a unchanged, x was never running
    second = await update_snapshot(2, first, touched, 0, "t")
    change = log.record(first, second, touched)
    assert change is not None
    assert [(u.before, u.view) for u in change.upserted] == [(b, b2)] and change.removed == ()


async def test_since_gives_what_is_held_and_none_beyond() -> None:
    log = ChangeLog(2, lambda task_id: "vanished")
    snapshots = [await build(1, [view("a")], None)]
    log.record(None, snapshots[0])
    for generation in range(2, 6):
        snapshots.append(await build(generation, [view("a", generation)], snapshots[-1]))
        log.record(snapshots[-2], snapshots[-1])
    assert log.held() == (3, 5) and len(log) == 2
    assert [change.generation for change in log.since(3) or []] == [4, 5]
    assert log.since(5) == []
    assert log.since(2) is None and log.since(6) is None  # no longer held, not yet made
    gap = await build(9, [view("a", 9)], snapshots[-1])
    log.record(snapshots[0], gap)  # installed after a snapshot the log did not see last: it starts again
    assert log.held() == (9, 9) and log.since(5) is None
