"""The finished-task history: tasks this service saw leave the running state, in memory and bounded.

It is fed by the tracker after each complete scan (`History.record` is its departure sink) and starts empty when
the service starts: a task that finished before that, or that started and finished between two scans without
ever being read running, is not in it."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

import orjson

from service.domain.tasks import format_time
from service.domain.tracker import Departure
from service.query.running import (
    Paging,
    Params,
    QueryError,
    in_range,
    page_meta,
    parse_choices,
    parse_paging,
    parse_range,
    parse_sort,
    render_list,
)

OUTCOMES = ("completed", "failed", "vanished", "other")
# `complete` and `completed` are both the producer's "finished well"; either name filters on that outcome.
OUTCOME_ALIASES = {"complete": "completed"}
FINISHED_SORT_KEYS = {"endTime": "end_ms", "startTime": "start_ms", "durationMs": "duration_ms", "taskId": "task_id"}
DEFAULT_FINISHED_SORT: tuple[tuple[str, bool], ...] = (("endTime", True),)
DEFAULT_FINISHED_PAGE_SIZE = 100  # the finished list is always paged: 10,000 records are megabytes


def outcome_of(status: str | None) -> str:
    """`completed`, `failed`, `vanished` (no finished value: the key expired or was deleted) or `other`."""
    if status is None:
        return "vanished"
    if status in ("complete", "completed"):
        return "completed"
    if status == "failed":
        return "failed"
    return "other"  # a status outside running_statuses that is not one of the producer's finished ones


@dataclass(frozen=True, slots=True)
class FinishedTask:
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
    json: bytes


def finished_task(seq: int, departure: Departure, detected_ms: int) -> FinishedTask:
    """A history record from the tracker's departure."""
    view, final = departure.view, departure.final
    client_id = (final.client_id if final is not None else "") or view.client_id
    status = view.process if final is None else final.process
    progress = view.total_progress if final is None else final.total_progress
    file_count = view.file_count if final is None else final.file_count
    start_ms = view.start_ms
    if final is not None and final.start_ms is not None:
        start_ms = final.start_ms
    duration_ms = max(0, departure.end_ms - start_ms)
    outcome = outcome_of(None if final is None else final.process)
    body = orjson.dumps(
        {
            "taskId": view.task_id,
            "clientId": client_id,
            "outcome": outcome,
            "status": status,
            "totalProgress": progress,
            "fileCount": file_count,
            "startTime": format_time(start_ms),
            "endTime": format_time(departure.end_ms),
            "durationMs": duration_ms,
            "lastSeenRunningTime": format_time(departure.last_seen_ms),
            "detectedTime": format_time(detected_ms),
        }
    )
    return FinishedTask(
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
        body,
    )


class History:
    """The last `size` finished tasks in detection order, with totals since the service started."""

    def __init__(self, size: int, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._records: deque[FinishedTask] = deque()
        self._size = size
        self._latest: dict[str, FinishedTask] = {}  # task id -> its latest run still kept
        self._seq = 0
        self._sorted: tuple[int, tuple[FinishedTask, ...]] = (0, ())
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
        for departure in departures:
            self._seq += 1
            entry = finished_task(self._seq, departure, detected_ms)
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

    def newest_first(self) -> tuple[FinishedTask, ...]:
        """Every kept record, newest end first (ties: latest detected first); sorted once per version."""
        version, records = self._sorted
        if version != self.version:
            records = tuple(sorted(self._records, key=lambda r: (r.end_ms, r.seq), reverse=True))
            self._sorted = (self.version, records)
        return records

    def latest(self, task_id: str) -> FinishedTask | None:
        """The latest kept run of `task_id`."""
        return self._latest.get(task_id)


# -- the finished list's query -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FinishedQuery:
    outcomes: tuple[str, ...] | None = None
    client_ids: tuple[str, ...] | None = None
    ended_after: int | None = None
    ended_before: int | None = None
    sort: tuple[tuple[str, bool], ...] = DEFAULT_FINISHED_SORT
    paging: Paging = Paging(1, DEFAULT_FINISHED_PAGE_SIZE)


def parse_finished_query(items: Iterable[tuple[str, str]]) -> FinishedQuery:
    """`status` (outcomes), `clientId`, `endedAfter`/`endedBefore`, `sort`, `page`/`pageSize`."""
    params = Params(items)
    ended_after, ended_before = parse_range(params, "endedAfter", "endedBefore")
    client_ids = params.many("clientId")
    outcomes = parse_choices(params, "status", OUTCOMES, OUTCOME_ALIASES)
    paging = parse_paging(params, DEFAULT_FINISHED_PAGE_SIZE)
    if paging is None:  # pragma: no cover - a default size always gives paging
        raise QueryError("pageSize", "", "an integer")
    return FinishedQuery(
        outcomes=outcomes,
        client_ids=None if client_ids is None else tuple(sorted(client_ids)),
        ended_after=ended_after,
        ended_before=ended_before,
        sort=parse_sort(params, tuple(FINISHED_SORT_KEYS), DEFAULT_FINISHED_SORT),
        paging=paging,
    )


def select_finished(records: Sequence[FinishedTask], query: FinishedQuery) -> list[FinishedTask]:
    """The records that match, in the query's order (ties keep newest-first)."""
    out: Sequence[FinishedTask] = records
    if query.outcomes is not None:
        outcomes = frozenset(query.outcomes)
        out = [r for r in out if r.outcome in outcomes]
    if query.client_ids is not None:
        clients = frozenset(query.client_ids)
        out = [r for r in out if r.client_id in clients]
    out = in_range(out, attrgetter("end_ms"), query.ended_after, query.ended_before)
    if query.sort != DEFAULT_FINISHED_SORT:
        for name, descending in reversed(query.sort):
            out = sorted(out, key=attrgetter(FINISHED_SORT_KEYS[name]), reverse=descending)
    return list(out)


def render_finished(history: History, query: FinishedQuery) -> bytes:
    """The success envelope of one page of the finished list."""
    matches = select_finished(history.newest_first(), query)
    start = (query.paging.page - 1) * query.paging.page_size
    page = matches[start : start + query.paging.page_size]
    meta: dict[str, object] = dict(page_meta(len(matches), query.paging))
    meta["historySince"] = format_time(history.started_ms)
    meta["historySize"] = history.size
    return render_list(meta, (r.json for r in page))
