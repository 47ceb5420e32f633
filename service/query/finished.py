"""The finished list's query: outcome, client and end-time filters, sort and pages over the history."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import cast

from service.domain.history import FinishedRun, History
from service.domain.times import format_time
from service.domain.vocabulary import OUTCOME_ALIASES, OUTCOMES
from service.query.params import (
    Paging,
    Params,
    QueryError,
    in_range,
    one_of,
    parse_choices,
    parse_paging,
    parse_range,
    parse_sort,
    sort_by,
)
from service.shapes.envelope import encode_ok
from service.shapes.tasks import FinishedTask, FinishedTasks, Outcome

FINISHED_SORT_KEYS = {"endTime": "end_ms", "startTime": "start_ms", "durationMs": "duration_ms", "taskId": "task_id"}
DEFAULT_FINISHED_SORT: tuple[tuple[str, bool], ...] = (("endTime", True),)
DEFAULT_FINISHED_PAGE_SIZE = 100  # the finished list is always paged: 10,000 records are megabytes


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


def select_finished(records: Sequence[FinishedRun], query: FinishedQuery) -> list[FinishedRun]:
    """The records that match, in the query's order (ties keep newest-first)."""
    out = one_of(records, "outcome", query.outcomes)
    out = one_of(out, "client_id", query.client_ids)
    out = in_range(out, attrgetter("end_ms"), query.ended_after, query.ended_before)
    return list(sort_by(out, query.sort, DEFAULT_FINISHED_SORT, FINISHED_SORT_KEYS))


def finished_record(run: FinishedRun) -> FinishedTask:
    """A history record as the API shows it."""
    return FinishedTask(
        task_id=run.task_id,
        client_id=run.client_id,
        outcome=cast(Outcome, run.outcome),
        status=run.status,
        total_progress=run.total_progress,
        file_count=run.file_count,
        start_time=format_time(run.start_ms),
        end_time=format_time(run.end_ms),
        duration_ms=run.duration_ms,
        last_seen_running_time=format_time(run.last_seen_ms),
        detected_time=format_time(run.detected_ms),
    )


def render_finished(history: History, query: FinishedQuery) -> bytes:
    """The success envelope of one page of the finished list."""
    matches = select_finished(history.newest_first(), query)
    paging = query.paging
    start = (paging.page - 1) * paging.page_size
    return encode_ok(
        FinishedTasks(
            total_tasks=len(matches),
            page=paging.page,
            page_size=paging.page_size,
            total_pages=math.ceil(len(matches) / paging.page_size),
            history_since=format_time(history.started_ms),
            history_size=history.size,
            tasks=[finished_record(run) for run in matches[start : start + paging.page_size]],
        )
    )
