"""A view's share of the change log: what changed for one filter + projection, encoded once, for the event stream
(`snapshot`, `changes`) and the running list's `since=`. Which tasks a view holds is decided by the running list's
own `select`, so a view's changes always lead to what the list serves."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import msgspec

from service.domain.tracker import TaskView
from service.query.params import Params, QueryError
from service.query.project import render_task
from service.query.running import DEFAULT_SORT, Query, select
from service.shapes.envelope import OK_PREFIX, encode_ok
from service.shapes.events import RemovedTask, RunningChanges, TaskChanges
from service.shapes.tasks import ProjectedTask
from service.snapshot.changes import ChangeSet
from service.snapshot.render import task_head
from service.snapshot.snapshot import Snapshot, task_key

_encode = msgspec.json.Encoder().encode
FILTERED_OUT = "filtered-out"


def parse_since(items: Iterable[tuple[str, str]]) -> int | None:
    """`since=<generation>`: a generation, without page, pageSize or sort (a delta is of the whole view)."""
    params = Params(items)
    raw = params.single("since")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise QueryError("since", raw, "a generation: an integer >= 0 (X-Snapshot-Generation, an event's id)")
    for name in ("page", "pageSize", "sort"):
        other = params.single(name)
        if other is not None:
            raise QueryError(name, other, "no value with since= (a delta is of the whole view, in the default order)")
    return int(raw)


def view_of(query: Query) -> Query:
    """The view a stream or a `since=` poll watches: the query's filters and projection; no pages, the default
    order (a delta has no place in a page). Its tasks must carry their id: changes are applied by it."""
    fields = query.projection.fields
    if "taskId" not in fields:
        raise QueryError("fields", ",".join(fields), "a list that includes taskId (changes are applied by task id)")
    return dataclasses.replace(query, paging=None, sort=DEFAULT_SORT)


def matches(view: TaskView, query: Query) -> bool:
    return bool(select((view,), query))


@dataclass(frozen=True, slots=True)
class Delta:
    """A view's net change over one or more change sets."""

    generation: int
    upserted: list[TaskView]  # newest start first
    removed: list[tuple[str, str]]  # (task id, outcome)

    def __bool__(self) -> bool:
        return bool(self.upserted or self.removed)


def delta(changes: Sequence[ChangeSet], query: Query, generation: int) -> Delta:
    """What `changes` (consecutive, oldest first) change in the view of `query`, ending at `generation` (the last
    one's, or the starting one's when there are none): a task that matched before and no longer does is removed,
    as `filtered-out` when it still runs; a task that matches at the end is upserted; one that came and went
    unseen is not mentioned."""
    first: dict[str, TaskView | None] = {}  # each task's view before the first change to it
    last: dict[str, TaskView | str] = {}  # its view after the last one, or how it left
    for change in changes:
        for upsert in change.upserted:
            task_id = upsert.view.task_id
            first.setdefault(task_id, upsert.before)
            last[task_id] = upsert.view
        for removal in change.removed:
            task_id = removal.view.task_id
            first.setdefault(task_id, removal.view)
            last[task_id] = removal.outcome
    upserted: list[TaskView] = []
    removed: list[tuple[str, str]] = []
    for task_id, end in last.items():
        start = first[task_id]
        had = start is not None and matches(start, query)
        if isinstance(end, str):
            if had:
                removed.append((task_id, end))
        elif matches(end, query):
            upserted.append(end)
        elif had:
            removed.append((task_id, FILTERED_OUT))
    upserted.sort(key=task_key)
    removed.sort()
    return Delta(changes[-1].generation if changes else generation, upserted, removed)


def heads(snapshot: Snapshot) -> _Heads:
    return _Heads(snapshot)


class _Heads:
    """A task's rendered head: the snapshot's when it holds that very view, else rendered (a view a later snapshot
    has already replaced)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._entries = snapshot.entries

    def __call__(self, view: TaskView) -> bytes:
        entry = self._entries.get(view.task_id)
        return entry.head if entry is not None and entry.view is view else task_head(view)


def _tasks(views: Iterable[TaskView], query: Query, head: _Heads) -> list[ProjectedTask]:
    projection = query.projection
    return [cast(ProjectedTask, msgspec.Raw(render_task(view, head(view), projection))) for view in views]


def _removed(removed: list[tuple[str, str]]) -> list[RemovedTask]:
    return [RemovedTask(task_id, outcome) for task_id, outcome in removed]  # type: ignore[arg-type]


def encode_changes(change: Delta, query: Query, head: _Heads) -> bytes:
    """The `changes` event's data."""
    return _encode(
        TaskChanges(
            generation=change.generation,
            upserted=_tasks(change.upserted, query, head),
            removed=_removed(change.removed),
        )
    )


def since_answer(change: Delta | None, snapshot: Snapshot, query: Query) -> bytes:
    """The running list's envelope for `since=`: `change` as a delta, or (None: not held) every task of the view in
    `snapshot`, flagged as a reset."""
    head = heads(snapshot)
    if change is None:
        data = RunningChanges(
            generation=snapshot.generation,
            upserted=_tasks(select(snapshot.tasks, query), query, head),
            removed=[],
            reset=True,
        )
    else:
        data = RunningChanges(
            generation=change.generation,
            upserted=_tasks(change.upserted, query, head),
            removed=_removed(change.removed),
            reset=False,
        )
    return encode_ok(data)


def snapshot_data(chunks: Iterable[bytes], generation: int) -> Iterator[bytes]:
    """The `snapshot` event's data from the running list's envelope (`chunks`, as rendered): the envelope's `data`
    object with `generation` first. The chunks in between are the rendered ones, not copies, taken one at a time as
    the stream sends them (a large body's are joined then)."""
    pending = iter(chunks)
    cut = len(OK_PREFIX) + 1  # the envelope up to `"data":` and the data object's `{`
    first = next(pending, b"")
    while len(first) < cut:  # (never: the prefix and the counts are rendered as one chunk)
        more = next(pending, None)
        if more is None:
            break
        first += more
    previous = b'{"generation":%d,' % generation + first[cut:]
    for chunk in pending:
        yield previous
        previous = chunk
    yield previous[:-1]  # the envelope's closing brace
