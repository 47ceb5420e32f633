"""What is learned across scans: when a task was first seen, when it last changed, its progress rate, its ETA.

Nothing here is invented from the progress figure: times come from the producer when it writes them, else
from the key's remaining TTL, else from what this service observed."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

from service.scanner import Observation
from service.tasks import StoredTask, format_time

# Derived write times jitter by the latency between Redis and this process; a value read again unchanged
# keeps its time unless the TTL shows a later write by more than this.
_TTL_JITTER_MS = 1000


@dataclass(frozen=True, slots=True)
class TaskView:
    """One running task as served: its fields, and its JSON rendered once, when it changed."""

    task_id: str
    client_id: str
    process: str
    total_progress: int
    start_ms: int
    update_ms: int
    eta_ms: int | None
    file_count: int
    json: bytes
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


@dataclass(slots=True)
class _State:
    first_seen_ms: int
    fingerprint: int
    anchor: tuple[int, int]  # (time, progress) of the first progress observed: the start of the rate
    last: tuple[int, int]  # (time, progress) of the latest progress change
    view: TaskView
    scan: int  # the last scan that saw this task
    seen_ms: int  # when that scan read it


def render(
    task_id: str,
    client_id: str,
    process: str,
    total_progress: int,
    start_ms: int,
    update_ms: int,
    eta_ms: int | None,
    file_list: bytes,
    stalled: bool = False,
) -> bytes:
    """A task's JSON object in the contract's field order; the file list is embedded as stored, not re-encoded."""
    task: dict[str, object] = {
        "taskId": task_id,
        "clientId": client_id,
        "status": process,
        "process": process,
        "totalProgress": total_progress,
        "startTime": format_time(start_ms),
        "lastUpdateTime": format_time(update_ms),
    }
    if eta_ms is not None:
        task["estimatedCompletionTime"] = format_time(eta_ms)
    task["stalled"] = stalled
    task["fileList"] = orjson.Fragment(file_list)
    return orjson.dumps(task)


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
        self._order: list[tuple[int, str]] = []  # (-start_ms, task_id), kept sorted
        self._scan = 0
        self._finished: dict[str, Observation] = {}  # tracked tasks this scan read in a finished status

    def begin_scan(self) -> None:
        self._scan += 1
        self._finished = {}  # what a failed scan saw is seen again: its values were not remembered as decoded

    def observe(self, observations: Iterable[Observation]) -> None:
        """Take in one page of running tasks as soon as it is decoded."""
        for obs in observations:
            state = self._states.get(obs.task.task_id)
            if state is None:
                self._add(obs)
            else:
                self._update(state, obs)

    def observe_finished(self, observations: Iterable[Observation]) -> None:
        """Take in one page's newly decoded values in a finished status; only tracked tasks matter."""
        states = self._states
        for obs in observations:
            if obs.task.task_id in states:
                self._finished[obs.task.task_id] = obs

    def end_scan(self) -> list[str]:
        """After a complete scan: forget the tasks it did not see (finished, expired, deleted); return their ids."""
        gone = [task_id for task_id, state in self._states.items() if state.scan != self._scan]
        departures: list[Departure] = []
        for task_id in gone:
            state = self._states.pop(task_id)
            self._order.pop(bisect.bisect_left(self._order, (-state.view.start_ms, task_id)))
            if self._on_departures is not None:
                departures.append(self._departure(state, self._finished.get(task_id)))
        self._finished = {}
        if departures and self._on_departures is not None:
            self._on_departures(departures)
        return gone

    def _departure(self, state: _State, final: Observation | None) -> Departure:
        if final is None:
            return Departure(state.view, state.seen_ms, None, state.seen_ms)
        # A finished value's write time is read like a running one's: the producer's, else the TTL's, else now.
        return Departure(state.view, state.seen_ms, final.task, self._observed_update(final, None, True))

    def views(self) -> list[TaskView]:
        """Running tasks, newest start first, ties by task id."""
        states = self._states
        return [states[task_id].view for _, task_id in self._order]

    def _observed_update(self, obs: Observation, previous: int | None, changed: bool) -> int:
        task = obs.task
        if task.update_ms is not None:
            return task.update_ms
        if self._ttl_ms > 0 and 0 < obs.pttl <= self._ttl_ms:
            written = min(obs.seen_ms - (self._ttl_ms - obs.pttl), obs.seen_ms)
            if previous is not None and not changed and abs(written - previous) <= _TTL_JITTER_MS:
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
        start_ms = task.start_ms if task.start_ms is not None else first_seen
        point = (update_ms, task.total_progress)
        view = _view(obs, start_ms, update_ms, None, obs.seen_ms - update_ms >= self._stall_ms, None)
        self._states[task.task_id] = _State(first_seen, obs.fingerprint, point, point, view, self._scan, obs.seen_ms)
        bisect.insort(self._order, (-start_ms, task.task_id))

    def _update(self, state: _State, obs: Observation) -> None:
        task = obs.task
        state.scan = self._scan
        state.seen_ms = obs.seen_ms
        old = state.view
        changed = obs.fingerprint != state.fingerprint
        update_ms = self._observed_update(obs, old.update_ms, changed)
        if changed:
            state.fingerprint = obs.fingerprint
            if task.total_progress != state.last[1]:
                state.last = (update_ms, task.total_progress)
                if task.total_progress < state.anchor[1]:  # progress went back (a restarted task): a new rate
                    state.anchor = state.last
        start_ms = task.start_ms if task.start_ms is not None else state.first_seen_ms
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
            self._order.pop(bisect.bisect_left(self._order, (-old.start_ms, task.task_id)))
            bisect.insort(self._order, (-start_ms, task.task_id))
        state.view = _view(obs, start_ms, update_ms, eta_ms, stalled, progress_rate(state.anchor, state.last))


def _view(
    obs: Observation, start_ms: int, update_ms: int, eta_ms: int | None, stalled: bool, rate: float | None
) -> TaskView:
    task = obs.task
    fields = (task.task_id, task.client_id, task.process, task.total_progress, start_ms, update_ms, eta_ms)
    return TaskView(*fields, task.file_count, render(*fields, task.file_list, stalled), stalled, rate)
