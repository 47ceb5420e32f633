"""What changed from one snapshot to the next, kept for a bounded number of generations: what the event stream and
the running list's `since=` are made of.

Computed beside the snapshot, not inside it, from what `Refresher._install` has in hand: the tasks a batch or a
tick touched, or, after a full build, the previous snapshot's entries against the new one's. A view is a new
object whenever anything served changes, so identity tells what changed."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from service.domain.tracker import TaskView
from service.snapshot.snapshot import Snapshot

logger = logging.getLogger("service.snapshot.changes")

# The outcome of a task that left the running list, by its id: the history's record of the departure that was just
# recorded (completed, failed, vanished, other).
OutcomeOf = Callable[[str], str]
# Told of every change set as it is recorded, with the snapshot it leads to (called where the refreshes run).
ChangeListener = Callable[[Snapshot, "ChangeSet"], None]


@dataclass(frozen=True, slots=True)
class Upsert:
    """A task new to the running list, or served differently: its view before (None: it was not running) and now."""

    before: TaskView | None
    view: TaskView


@dataclass(frozen=True, slots=True)
class Removal:
    """A task that left the running list: its last served view and how it left."""

    view: TaskView
    outcome: str


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """The difference between the snapshot installed before (`base`, usually `generation - 1`) and the one of
    `generation`."""

    base: int  # the generation this change set starts from
    generation: int
    upserted: tuple[Upsert, ...]  # in no particular order
    removed: tuple[Removal, ...]

    def __bool__(self) -> bool:
        return bool(self.upserted or self.removed)


def diff(
    previous: Snapshot, snapshot: Snapshot, touched: Mapping[str, TaskView | None] | None, outcome_of: OutcomeOf
) -> ChangeSet:
    """The change set from `previous` to `snapshot`; `touched`: only those tasks may differ (a batch, a tick)."""
    old, new = previous.entries, snapshot.entries
    upserted: list[Upsert] = []
    removed: list[Removal] = []
    if touched is not None:
        candidates = touched.keys()
    else:
        candidates = {*old.keys(), *new.keys()}  # type: ignore[assignment]  # a set of ids, iterated the same
    for task_id in candidates:
        before_entry, now_entry = old.get(task_id), new.get(task_id)
        before = None if before_entry is None else before_entry.view
        now = None if now_entry is None else now_entry.view
        if before is now:
            continue
        if now is not None:
            upserted.append(Upsert(before, now))
        elif before is not None:
            removed.append(Removal(before, outcome_of(task_id)))
    return ChangeSet(previous.generation, snapshot.generation, tuple(upserted), tuple(removed))


class ChangeLog:
    """The change sets of the last `size` generations, contiguous: `since(g)` gives every one after `g`, or None
    when they are no longer (or not yet) all held."""

    def __init__(self, size: int, outcome_of: OutcomeOf) -> None:
        self._size = size
        self._outcome_of = outcome_of
        # recorded where the refreshes run, read where requests are served (possibly two threads)
        self._lock = threading.Lock()
        self._sets: deque[ChangeSet] = deque()
        self._base: int | None = None  # the generation the oldest held change set starts from
        self._newest: int | None = None  # the generation of the last snapshot recorded
        self.listeners: list[ChangeListener] = []

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._sets)

    def held(self) -> tuple[int | None, int | None]:
        """The oldest generation `since` answers from, and the newest recorded."""
        return self._base, self._newest

    def record(
        self, previous: Snapshot | None, snapshot: Snapshot, touched: Mapping[str, TaskView | None] | None = None
    ) -> ChangeSet | None:
        """Take in the snapshot just installed after `previous`; None when there is nothing to compare it with (the
        first snapshot, or one after a gap in the log), which starts the log again from it."""
        if previous is None or self._newest != previous.generation:
            with self._lock:
                self._sets.clear()
                self._base = self._newest = snapshot.generation
            return None
        change = diff(previous, snapshot, touched, self._outcome_of)
        with self._lock:
            self._sets.append(change)
            while len(self._sets) > self._size:
                self._base = self._sets.popleft().generation
            self._newest = snapshot.generation
        for listener in self.listeners:
            try:
                listener(snapshot, change)
            except Exception:  # a listener must never break the refresh that installed the snapshot
                logger.exception("change listener %r failed", listener)
        return change

    def since(self, generation: int) -> list[ChangeSet] | None:
        """Every change set after `generation`, oldest first ([] when it is the newest); None when some of them are
        no longer held, or `generation` is not one this log knows."""
        with self._lock:
            if self._base is None or self._newest is None or not self._base <= generation <= self._newest:
                return None
            return [change for change in self._sets if change.generation > generation]
