"""What is learned across scans: when a task was first seen, when it last changed, its progress rate, its ETA.

Nothing here is invented from the progress figure: times come from the producer when it writes them, else
from the key's remaining TTL, else from what this service observed."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter

import msgspec

from service.domain.tasks import Observation, StoredTask

# Derived write times jitter by the latency between Redis and this process; a value read again unchanged
# keeps its time unless the TTL shows a later write by more than this.
_TTL_JITTER_MS = 1000


class TaskView(msgspec.Struct, frozen=True, gc=False):
    """One running task as served. A new object whenever anything served changes: identity tells "unchanged"."""

    task_id: str
    client_id: str
    process: str
    total_progress: int
    start_ms: int
    update_ms: int
    eta_ms: int | None
    file_count: int
    file_list: bytes  # the file list's JSON array as stored
    stalled: bool = False  # unchanged for `stall_after` seconds, measured from update_ms
    rate: float | None = None  # observed progress rate, % per minute; None before two progress points


@dataclass(frozen=True, slots=True)
class Departure:
    """A running task that a complete scan no longer found running."""

    view: TaskView  # the task as last served while running
    last_seen_ms: int  # the last time a scan read it running
    final: StoredTask | None  # the finished value that replaced it; None: the key vanished (expired, deleted)
    end_ms: int  # the finished value's write time; for a vanished task, last_seen_ms


DepartureSink = Callable[[list[Departure]], None]


# One per running task, a million of them at the scale the service is built for: flat fields rather than tuples
# of (time, progress), the serving order's key held here rather than in a tuple per task, and gc=False (it holds
# numbers, strings and an untracked view, never a cycle): each is a saving per task (docs/performance.md).
class _State(msgspec.Struct, gc=False):
    order: int  # -view.start_ms: the tracker's order is (order, task_id), newest start first
    task_id: str
    first_seen_ms: int
    fingerprint: int
    anchor_ms: int  # the first progress observed, (time, progress): the start of the rate
    anchor_progress: int
    last_ms: int  # the latest progress change
    last_progress: int
    view: TaskView
    scan: int  # the last scan that saw this task
    seen_ms: int  # when that scan read it
    due_ms: int | None = None  # the earliest time the tracker will look at this view again (see Tracker.retime)

    @property
    def anchor(self) -> tuple[int, int]:
        return (self.anchor_ms, self.anchor_progress)

    @property
    def last(self) -> tuple[int, int]:
        return (self.last_ms, self.last_progress)


_ORDER = attrgetter("order", "task_id")  # a state's place in the tracker's order (bisect's key, in C)


def estimate_completion(anchor: tuple[int, int], last: tuple[int, int], now_ms: int) -> int | None:
    """Extrapolate the observed progress rate to 100 %; None without a rate, at 0 % or at 100 %."""
    (t0, p0), (t1, p1) = anchor, last
    if p1 <= 0 or p1 >= 100 or p1 <= p0 or t1 <= t0:
        return None
    eta = t1 + (100 - p1) * (t1 - t0) / (p1 - p0)
    if eta < now_ms:
        # Late: the task has not moved since t1, so the rate up to now is an upper bound; extrapolate from now.
        eta = now_ms + (100 - p1) * (now_ms - t0) / (p1 - p0)
    return round(eta)


def progress_rate(anchor: tuple[int, int], last: tuple[int, int]) -> float | None:
    """Observed progress in % per minute from the first progress point to the latest; None without a rise."""
    (t0, p0), (t1, p1) = anchor, last
    if p1 <= p0 or t1 <= t0:
        return None
    return (p1 - p0) * 60_000 / (t1 - t0)


class Tracker:
    """Per-task memory across scans, and the running tasks in serving order (newest start first).

    `on_departures` gets, after each complete scan, the tasks that left the running state and why."""

    def __init__(
        self, producer_key_ttl: int, stall_after: int = 300, on_departures: DepartureSink | None = None
    ) -> None:
        self._ttl_ms = producer_key_ttl * 1000
        self._stall_ms = stall_after * 1000
        self._on_departures = on_departures
        self._states: dict[str, _State] = {}
        # the states by (-start_ms, task_id) (`_ORDER`, unique), kept sorted: views() needs no lookups
        self._order: list[_State] = []
        # Tasks added during the current scan, sorted into _order in one go: one insort per new task is
        # quadratic when a first scan adds tens of thousands.
        self._added: list[_State] = []
        # Known tasks the current scan has not seen yet: what is left at its end is gone. A copy at the start
        # and a pop per task seen cost less than a pass over every state at the end, which held the event loop
        # too long with tens of thousands of tasks.
        self._unseen: dict[str, _State] = {}
        self._scan = 0
        # While a scan runs: the tasks a change feed's batch has read since it began. The batch's reading is the
        # newer or as new (a later write is announced again), so the scan leaves these tasks as the batch left them.
        self._claimed: set[str] | None = None
        self.last_claimed: set[str] = set()  # what batches read during the last complete scan, up to its end
        # tasks given a new view by a scan and not yet handed out (`take_renewed`); what batches and ticks change
        # they hand out themselves
        self._renewed: set[str] = set()
        self.future_times = 0  # producer times later than the scan that read them, clamped to that scan's time
        # tracked tasks read in a finished status since the last complete scan (failed ones included)
        self._finished: dict[str, Observation] = {}
        # When time alone may change a task's view (it turns stalled, its estimate passes): (due, task id), a heap
        # holding for each task the entry its state names (`_State.due_ms`), plus entries superseded by an earlier
        # one, dropped when they come up.
        self._due: list[tuple[int, str]] = []

    def begin_scan(self) -> None:
        self._merge_added()  # an earlier scan that failed may have left some
        self._scan += 1
        self._unseen = self._states.copy()
        self._claimed = set()
        # `_finished` is kept: a failed scan's decoded values are remembered, so the next scan does not report
        # them again; end_scan of a complete scan uses and clears it

    def observe(self, observations: Iterable[Observation]) -> None:
        """Take in one page of running tasks as soon as it is decoded (tasks a batch read since the scan began are
        left as the batch left them)."""
        claimed = self._claimed
        if claimed:
            observations = [obs for obs in observations if obs.task.task_id not in claimed]
        self._take(observations)

    def _take(self, observations: Iterable[Observation]) -> None:
        unseen = self._unseen
        for obs in observations:
            state = self._states.get(obs.task.task_id)
            if state is None:
                self._add(obs)
            else:
                unseen.pop(obs.task.task_id, None)
                self._update(state, obs)

    def observe_finished(self, observations: Iterable[Observation]) -> None:
        """Take in one page's newly decoded values in a finished status; only tracked tasks matter."""
        states, claimed = self._states, self._claimed or ()
        for obs in observations:
            if obs.task.task_id in states and obs.task.task_id not in claimed:
                self._finished[obs.task.task_id] = obs

    def take_renewed(self, limit: int | None = None) -> dict[str, TaskView] | None:
        """The running tasks scans gave a new view (failed scans included) that were not handed out since (by this
        call, `apply` or `retime`): with a scan's departures, what may differ from the snapshot installed last.
        None, when there are more than `limit` (the caller renders everything again: no need to gather them)."""
        states, renewed, self._renewed = self._states, self._renewed, set()
        if limit is not None and len(renewed) > limit:
            return None
        return {task_id: states[task_id].view for task_id in renewed if task_id in states}

    def end_scan(self) -> list[str]:
        """After a complete scan: forget the tasks it did not see (finished, expired, deleted); return their ids."""
        self._merge_added()
        self.last_claimed, self._claimed = self._claimed or set(), None
        scan = self._scan
        gone = [(task_id, state) for task_id, state in self._unseen.items() if state.scan != scan]
        self._unseen = {}
        for task_id, _ in gone:
            del self._states[task_id]
        if len(gone) > 64:  # one pass rather than a list deletion per task
            self._order = [state for state in self._order if state.scan == scan]
        else:
            for _, state in gone:
                self._unorder(state)
        if gone and self._on_departures is not None:
            finished = self._finished
            self._on_departures([self._departure(state, finished.get(task_id)) for task_id, state in gone])
        self._finished = {}
        return [task_id for task_id, _ in gone]

    def apply(
        self, running: list[Observation], finished: Sequence[Observation], absent: Sequence[str]
    ) -> dict[str, TaskView | None]:
        """Take in what the change feed's batch read, between scans or during one: running tasks' new values, tasks
        now in a finished status, and tasks whose key is gone or holds no running task. Departures go to the sink at
        once. Returns the tasks touched: id -> its view now, None when it is no longer running."""
        self._take(running)
        self._merge_added()
        touched: dict[str, TaskView | None] = {obs.task.task_id: self._states[obs.task.task_id].view for obs in running}
        gone: list[Departure] = []
        for obs in finished:
            state = self._states.get(obs.task.task_id)
            if state is not None:
                self._forget(obs.task.task_id, state)
                gone.append(self._departure(state, obs))
                touched[obs.task.task_id] = None
        for task_id in absent:
            state = self._states.get(task_id)
            if state is not None:
                self._forget(task_id, state)
                gone.append(Departure(state.view, state.seen_ms, None, state.seen_ms))
                touched[task_id] = None
        if gone and self._on_departures is not None:
            self._on_departures(gone)
        self._renewed.difference_update(touched)  # handed out here
        if self._claimed is not None:  # every task read, tracked or not: the scan may have read an older value
            self._claimed.update(touched)
            self._claimed.update(obs.task.task_id for obs in finished)
            self._claimed.update(absent)
        return touched

    def _forget(self, task_id: str, state: _State) -> None:
        del self._states[task_id]
        self._unseen.pop(task_id, None)
        self._finished.pop(task_id, None)
        self._unorder(state)

    def _unorder(self, state: _State) -> None:
        order = self._order
        index = bisect.bisect_left(order, _ORDER(state), key=_ORDER)
        if index < len(order) and order[index] is state:
            del order[index]
        else:  # added during the scan running now, not sorted in yet
            self._added.remove(state)

    def retime(self, now_ms: int) -> dict[str, TaskView | None]:
        """What time alone changes, with no value read: a task turns stalled, a passed estimate is made again.
        Returns the views that changed, by task id. Its cost follows the tasks that came due, not the tasks held."""
        changed: dict[str, TaskView | None] = {}
        due, states = self._due, self._states
        while due and due[0][0] <= now_ms:
            when, task_id = heapq.heappop(due)
            state = states.get(task_id)
            if state is None or state.due_ms != when:
                continue  # gone, or superseded by an earlier entry
            state.due_ms = None
            view = state.view
            stalled = now_ms - view.update_ms >= self._stall_ms
            eta_ms = view.eta_ms
            if eta_ms is not None and eta_ms < now_ms:
                eta_ms = estimate_completion(state.anchor, state.last, now_ms)
            if stalled != view.stalled or eta_ms != view.eta_ms:
                state.view = changed[task_id] = msgspec.structs.replace(view, stalled=stalled, eta_ms=eta_ms)
            self._schedule(task_id, state, now_ms)
        self._renewed.difference_update(changed)  # handed out here
        return changed

    def _schedule(self, task_id: str, state: _State, now_ms: int | None = None) -> None:
        """Remember when time alone may change the state's view: when it turns stalled, when its estimate passes.
        An entry already due sooner stands: when it comes up, the view of that moment is scheduled."""
        view = state.view
        when = None if view.eta_ms is None else view.eta_ms + 1  # once it has passed
        if not view.stalled:
            stalls = view.update_ms + self._stall_ms
            when = stalls if when is None else min(when, stalls)
        if when is None:
            return
        if now_ms is not None and when <= now_ms:
            when = now_ms + 1  # came due and did not change: no sooner than the next moment
        if state.due_ms is None or when < state.due_ms:
            state.due_ms = when
            heapq.heappush(self._due, (when, task_id))

    def _departure(self, state: _State, final: Observation | None) -> Departure:
        if final is None:
            return Departure(state.view, state.seen_ms, None, state.seen_ms)
        # A finished value's write time is read like a running one's: the producer's, else the TTL's, else now.
        end_ms = self._observed_update(final, None, True)
        if final.task.start_ms is not None and final.task.start_ms > end_ms:
            self.future_times += 1  # a start after the end: the history clamps it to the end
        return Departure(state.view, state.seen_ms, final.task, end_ms)

    def views(self) -> list[TaskView]:
        """Running tasks, newest start first, ties by task id."""
        return [view for part in self.views_in_slices() for view in part]

    def views_in_slices(self, size: int = 5000) -> Iterator[list[TaskView]]:
        """views() in slices, so that a caller can yield to the event loop between two.

        The tracker must not change until the last slice is taken."""
        self._merge_added()
        order = self._order
        for start in range(0, len(order), size):
            yield [state.view for state in order[start : start + size]]

    def _merge_added(self) -> None:
        if len(self._added) <= 64:  # a few (a feed's batch): in place, no pass over the whole order
            for state in self._added:
                bisect.insort(self._order, state, key=_ORDER)
        else:
            self._order.extend(self._added)
            self._order.sort(key=_ORDER)
        self._added = []

    def _observed_update(self, obs: Observation, previous: int | None, changed: bool) -> int:
        task = obs.task
        if task.update_ms is not None:
            if task.update_ms <= obs.seen_ms:
                return task.update_ms
            # A write time after the scan that read the value (the producer's clock is ahead, or the value is
            # wrong) is clamped to that scan's time, counted once per value, and kept while the value is the same.
            if previous is not None and not changed:
                return previous
            self.future_times += 1
            return obs.seen_ms
        if self._ttl_ms > 0 and 0 < obs.pttl <= self._ttl_ms:
            written = min(obs.seen_ms - (self._ttl_ms - obs.pttl), obs.seen_ms)
            if previous is not None and not changed and written - previous <= _TTL_JITTER_MS:
                # the same value: its time stands unless the TTL shows a later write (never an earlier one: a
                # writer that kept the TTL moved the time forward, see _update)
                return previous
            return written
        if previous is None or changed:
            return obs.seen_ms  # the first time this service saw the current value
        return previous

    def _add(self, obs: Observation) -> None:
        task = obs.task
        update_ms = self._observed_update(obs, None, True)
        # Without a producer start time the task began no later than its first evidence: this first sight, or
        # the write time its TTL reveals.
        first_seen = min(obs.seen_ms, update_ms)
        start_ms = first_seen if task.start_ms is None else min(task.start_ms, first_seen)
        if task.start_ms is not None and task.start_ms > obs.seen_ms:
            self.future_times += 1  # a start after the scan that saw the task running: clamped to the sighting
        progress = task.total_progress
        view = _view(obs, start_ms, update_ms, None, obs.seen_ms - update_ms >= self._stall_ms, None)
        state = _State(
            -start_ms, task.task_id, first_seen, obs.fingerprint, update_ms, progress, update_ms, progress, view,
            self._scan, obs.seen_ms,
        )  # fmt: skip
        self._states[task.task_id] = state
        self._renewed.add(task.task_id)
        self._schedule(task.task_id, state)
        self._added.append(state)

    def _update(self, state: _State, obs: Observation) -> None:
        task = obs.task
        state.scan = self._scan
        previous_seen, state.seen_ms = state.seen_ms, obs.seen_ms
        old = state.view
        changed = obs.fingerprint != state.fingerprint
        update_ms = self._observed_update(obs, old.update_ms, changed)
        if changed and update_ms < previous_seen:
            # A value that changed was written after the scan before this one read the old value, whatever its TTL
            # says: a writer that keeps the TTL (SET KEEPTTL) leaves the first write's expiry, and the task would
            # look stalled while it moves.
            update_ms = previous_seen
        if changed:
            state.fingerprint = obs.fingerprint
            if task.total_progress != state.last_progress:
                state.last_ms, state.last_progress = update_ms, task.total_progress
                if task.total_progress < state.anchor_progress:  # progress went back (a restarted task): a new rate
                    state.anchor_ms, state.anchor_progress = update_ms, task.total_progress
        # a producer's start time stands, unless it is after this service first saw the task running
        start_ms = state.first_seen_ms if task.start_ms is None else min(task.start_ms, state.first_seen_ms)
        eta_ms = old.eta_ms
        if changed or eta_ms is None or eta_ms < obs.seen_ms:
            # An estimate stands until the progress moves or the estimate has passed: re-estimating a late task
            # at every scan would change the body (and its ETag) every refresh for nothing.
            eta_ms = estimate_completion(state.anchor, state.last, obs.seen_ms)
        # A task turns stalled by time alone, with no new value: that scan re-renders it.
        stalled = obs.seen_ms - update_ms >= self._stall_ms
        served = (update_ms, eta_ms, start_ms, stalled)
        if not changed and served == (old.update_ms, old.eta_ms, old.start_ms, old.stalled):
            return  # nothing new: keep the rendered view
        if start_ms != old.start_ms:
            self._unorder(state)
            state.order = -start_ms
            self._added.append(state)
        state.view = _view(obs, start_ms, update_ms, eta_ms, stalled, progress_rate(state.anchor, state.last))
        self._renewed.add(task.task_id)
        self._schedule(task.task_id, state)


def _view(
    obs: Observation, start_ms: int, update_ms: int, eta_ms: int | None, stalled: bool, rate: float | None
) -> TaskView:
    task = obs.task
    return TaskView(
        task.task_id,
        task.client_id,
        task.process,
        task.total_progress,
        start_ms,
        update_ms,
        eta_ms,
        task.file_count,
        task.file_list,
        stalled,
        rate,
    )
