"""The running list's query: the query string as a frozen, normalised `Query`, applied to a snapshot's tasks
(filter, sort, page) and the page rendered, re-using each task's pre-rendered JSON."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import cast

import msgspec

from service.domain.tracker import TaskView
from service.query.params import (
    Paging,
    Params,
    in_range,
    one_of,
    parse_bool,
    parse_choices,
    parse_paging,
    parse_range,
    parse_sort,
    sort_by,
)
from service.query.project import Projection, parse_projection, render_task
from service.shapes.envelope import encode_ok
from service.shapes.tasks import ProjectedTask, RunningTasks

SORT_KEYS = {
    "startTime": "start_ms",
    "lastUpdateTime": "update_ms",
    "totalProgress": "total_progress",
    "taskId": "task_id",
}
DEFAULT_SORT: tuple[tuple[str, bool], ...] = (("startTime", True),)  # (key, descending): the snapshot's order


@dataclass(frozen=True, slots=True)
class Query:
    """A normalised running-list query: equal queries are equal objects (the result cache's key)."""

    client_ids: tuple[str, ...] | None = None  # sorted, distinct
    statuses: tuple[str, ...] | None = None
    started_after: int | None = None  # epoch ms, inclusive
    started_before: int | None = None  # exclusive
    updated_after: int | None = None
    updated_before: int | None = None
    stalled: bool | None = None
    sort: tuple[tuple[str, bool], ...] = DEFAULT_SORT
    paging: Paging | None = None
    projection: Projection = Projection()

    @property
    def is_default(self) -> bool:
        """Asks for exactly what the unfiltered read serves: the snapshot's own body answers it."""
        return self == _DEFAULT_QUERY


_DEFAULT_QUERY = Query()


@dataclass(frozen=True, slots=True)
class Page:
    """The tasks of one page and what the envelope says about them."""

    total: int
    tasks: list[TaskView]
    paging: Paging | None


# -- parsing -----------------------------------------------------------------------------------------------


def parse_query(items: Iterable[tuple[str, str]], running_statuses: Sequence[str]) -> Query:
    """The running list's query from the query string's pairs; unknown parameters are ignored."""
    params = Params(items)
    started_after, started_before = parse_range(params, "startedAfter", "startedBefore")
    updated_after, updated_before = parse_range(params, "updatedAfter", "updatedBefore")
    client_ids = params.many("clientId")
    return Query(
        client_ids=None if client_ids is None else tuple(sorted(client_ids)),
        statuses=parse_choices(params, "status", running_statuses),
        started_after=started_after,
        started_before=started_before,
        updated_after=updated_after,
        updated_before=updated_before,
        stalled=parse_bool(params, "stalled"),
        sort=parse_sort(params, tuple(SORT_KEYS), DEFAULT_SORT),
        paging=parse_paging(params),
        projection=parse_projection(params),
    )


# -- applying ----------------------------------------------------------------------------------------------


def select(tasks: Sequence[TaskView], query: Query) -> list[TaskView]:
    """The tasks that match every filter, in the query's order (ties keep the snapshot's order)."""
    # one pass per given filter: each sees fewer tasks than the one before
    out = one_of(tasks, "client_id", query.client_ids)
    out = one_of(out, "process", query.statuses)
    if query.stalled is not None:
        stalled = query.stalled
        out = [t for t in out if t.stalled is stalled]
    out = in_range(out, attrgetter("start_ms"), query.started_after, query.started_before)
    out = in_range(out, attrgetter("update_ms"), query.updated_after, query.updated_before)
    return list(sort_by(out, query.sort, DEFAULT_SORT, SORT_KEYS))


def paginate(items: list[TaskView], paging: Paging | None) -> Page:
    if paging is None:
        return Page(len(items), items, None)
    start = (paging.page - 1) * paging.page_size
    return Page(len(items), items[start : start + paging.page_size], paging)


def render_page(page: Page, projection: Projection, heads: Callable[[TaskView], bytes]) -> bytes:
    """The success envelope of one page; `heads` gives each task's rendered head."""
    paging = page.paging
    meta = RunningTasks(total_tasks=page.total, tasks=[])
    if paging is not None:
        meta.page, meta.page_size = paging.page, paging.page_size
        meta.total_pages = math.ceil(page.total / paging.page_size)
    meta.tasks = [cast(ProjectedTask, msgspec.Raw(render_task(t, heads(t), projection))) for t in page.tasks]
    return encode_ok(meta)
