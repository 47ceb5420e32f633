"""The finished-task history: tasks this service saw leave the running state, in memory and bounded.

It is fed by the tracker after each complete scan (`History.record` is its departure sink) and starts empty when
the service starts: a task that finished before that, or that started and finished between two scans without
ever being read running, is not in it."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.domain.tracker import Departure
from service.domain.vocabulary import outcome_of


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """One run of a task, from its first sighting to the scan that found it no longer running."""

    seq: int  # order of detection, for ties
    task_id: str
    client_id: str
    outcome: str
    status: str  # the finished value's status; for a vanished task the last running status
    total_progress: int  # idem
    file_count: int
    start_ms: int
    end_ms: int
    duration_ms: int
    last_seen_ms: int  # the last time a scan read it running
    detected_ms: int  # when the scan that found it gone ended


def finished_run(seq: int, departure: Departure, detected_ms: int) -> FinishedRun:
    """A history record from the tracker's departure."""
    view, final = departure.view, departure.final
    client_id = (final.client_id if final is not None else "") or view.client_id
    status = view.process if final is None else final.process
    progress = view.total_progress if final is None else final.total_progress
    file_count = view.file_count if final is None else final.file_count
    start_ms = view.start_ms
    if final is not None and final.start_ms is not None:
        start_ms = final.start_ms
    # a run ends no earlier than it starts: a producer's start after the end is clamped to the end
    start_ms = min(start_ms, departure.end_ms)
    duration_ms = departure.end_ms - start_ms
    outcome = outcome_of(None if final is None else final.process)
    return FinishedRun(
        seq,
        view.task_id,
        client_id,
        outcome,
        status,
        progress,
        file_count,
        start_ms,
        departure.end_ms,
        duration_ms,
        departure.last_seen_ms,
        detected_ms,
    )


class History:
    """The last `size` finished tasks in detection order, with totals since the service started."""

    def __init__(self, size: int, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or (lambda: int(time.time() * 1000))
        # Records are added where the refreshes run and read where requests are served, which may be two threads
        # (service.snapshot.worker): an update and a sort of the records never overlap.
        self._lock = threading.Lock()
        self._records: deque[FinishedRun] = deque()
        self._size = size
        self._latest: dict[str, FinishedRun] = {}  # task id -> its latest run still kept
        self._seq = 0
        self._sorted: tuple[int, tuple[FinishedRun, ...]] = (0, ())
        self.started_ms = self._clock()
        self.version = 0  # changes whenever records change: part of every cache key and ETag built on them
        self.totals: Counter[str] = Counter()  # outcomes since the service started, evicted records included
        self.evicted = 0
        self.evicted_newest_end_ms: int | None = None  # windows starting before this are missing evicted records

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._records)

    def record(self, departures: Sequence[Departure]) -> None:
        """The tracker's departure sink: one record per run that left the running state."""
        if not departures:
            return
        detected_ms = self._clock()
        with self._lock:
            self._record(departures, detected_ms)

    def _record(self, departures: Sequence[Departure], detected_ms: int) -> None:
        for departure in departures:
            self._seq += 1
            entry = finished_run(self._seq, departure, detected_ms)
            self._records.append(entry)
            self._latest[entry.task_id] = entry
            self.totals[entry.outcome] += 1
        while len(self._records) > self._size:
            old = self._records.popleft()
            self.evicted += 1
            if self._latest.get(old.task_id) is old:
                del self._latest[old.task_id]
            if self.evicted_newest_end_ms is None or old.end_ms > self.evicted_newest_end_ms:
                self.evicted_newest_end_ms = old.end_ms
        self.version += 1

    def newest_first(self) -> tuple[FinishedRun, ...]:
        """Every kept record, newest end first (ties: latest detected first); sorted once per version."""
        version, records = self._sorted
        if version != self.version:
            with self._lock:
                version = self.version
                records = tuple(sorted(self._records, key=lambda r: (r.end_ms, r.seq), reverse=True))
            self._sorted = (version, records)
        return records

    def latest(self, task_id: str) -> FinishedRun | None:
        """The latest kept run of `task_id`."""
        return self._latest.get(task_id)

    def outcome(self, task_id: str) -> str:
        """How `task_id` last left the running state; `vanished` when no run of it is kept."""
        record = self._latest.get(task_id)
        return "vanished" if record is None else record.outcome
