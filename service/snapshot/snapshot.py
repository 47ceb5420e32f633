"""An immutable snapshot of the running tasks with its pre-rendered body, replaced by reference."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter

import msgspec

from service.domain.tracker import TaskView
from service.shapes.envelope import OK_PREFIX
from service.shapes.tasks import RunningTasks
from service.snapshot.body import Rendered, RenderedBody, Segment, assemble_runs, cut_segments
from service.snapshot.entries import Sharded, ShardedBuilder
from service.snapshot.order import (
    SEPARATOR,
    Entry,
    Group,
    TaskKey,
    chunk_runs,
    ends_segment,
    group,
    group_keys,
    join_tasks,
    parts,
    relocate,
    segments_of,
    task_key,
)
from service.snapshot.render import task_head
from service.source.scanner import ScanStats

__all__ = ["Entry", "Snapshot", "TaskKey", "build_snapshot", "task_key", "update_snapshot"]

_encode = msgspec.json.Encoder().encode
# The event loop gets a turn after this much work while a snapshot's tasks are gathered: a task looked up counts
# one, a head rendered as many as _RENDER_WORK lookups (about what rendering one costs).
_WORK_PER_TURN = 4096
_RENDER_WORK = 40
_SUFFIX = b"]}}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: int
    built_ms: int  # wall clock, for people
    built_monotonic: float  # for the age, immune to clock steps
    entries: Sharded[Entry] = field(compare=False, repr=False)  # task id -> its view and head; read only
    rendered: Rendered = field(compare=False, repr=False)  # the running list's whole success envelope
    stats: ScanStats = field(compare=False)
    # The tasks in serving order as the body is cut: segments of tasks, in groups (service.snapshot.order).
    groups: tuple[Group, ...] = field(default=(), compare=False, repr=False)
    group_keys: tuple[TaskKey, ...] = field(default=(), compare=False, repr=False)  # each group's first task
    groups_length: int = field(default=0, compare=False, repr=False)  # their items' bytes, each after a separator
    # `tasks`, made from the groups the first time it is asked for (a change feed's batch never needs it)
    _tasks: list[tuple[TaskView, ...]] = field(default_factory=list, compare=False, repr=False)

    @property
    def tasks(self) -> tuple[TaskView, ...]:
        """The running tasks, newest start first (ties by task id)."""
        if not self._tasks:  # two threads may both make it: the same tuple, and either is kept
            self._tasks.append(tuple(entry.view for segment in self.segments for entry in segment.items))
        return self._tasks[0]

    @property
    def segments(self) -> tuple[Segment, ...]:
        """How the body is cut, in order."""
        return tuple(segments_of(self.groups))

    @property
    def task_count(self) -> int:
        return len(self.entries)

    @property
    def body(self) -> RenderedBody:
        return self.rendered.body

    @property
    def etag(self) -> str:
        """Strong: equal bodies have equal tags."""
        return self.rendered.etag

    def age(self, now_monotonic: float | None = None) -> float:
        return (time.monotonic() if now_monotonic is None else now_monotonic) - self.built_monotonic

    def is_fresh(self, ttl_seconds: float, now_monotonic: float | None = None) -> bool:
        return self.age(now_monotonic) < ttl_seconds

    def head(self, view: TaskView) -> bytes:
        """The JSON head of one of this snapshot's tasks."""
        return self.entries[view.task_id].head


async def build_snapshot(
    generation: int,
    tasks: list[TaskView],
    stats: ScanStats,
    built_ms: int,
    previous: Snapshot | None,
    etag_prefix: str,
) -> Snapshot:
    """A snapshot of `tasks`. Only the tasks whose view changed since `previous` are rendered; the body and ETag
    of `previous` are kept when no task changed, and the segments of its body that hold the same tasks are taken
    as they are. The event loop gets a turn now and then: a body of hundreds of megabytes never blocks the
    requests served meanwhile."""
    known: Mapping[str, Entry] = {} if previous is None else previous.entries
    entries: ShardedBuilder[Entry] = ShardedBuilder(len(tasks))
    ordered: list[Entry] = []
    work = 0
    for view in tasks:
        entry = known.get(view.task_id)
        if entry is None or entry.view is not view:
            entry = Entry(view, task_head(view))
            work += _RENDER_WORK
        entries.add(view.task_id, entry)
        ordered.append(entry)
        work += 1
        if work >= _WORK_PER_TURN:
            work = 0
            await asyncio.sleep(0)
    if previous is not None and _same_tasks(previous.tasks, tasks):
        body, groups, keys, length = previous.rendered, previous.groups, previous.group_keys, previous.groups_length
    else:
        segments = await cut_segments(
            ordered,
            parts,
            SEPARATOR,
            ends_segment=ends_segment,
            previous=() if previous is None else previous.segments,
            join=join_tasks,
        )
        groups = group(segments)
        keys = group_keys(groups)
        length = sum(map(attrgetter("length"), groups))
        body = _rendered(groups, length, len(tasks), etag_prefix, generation)
    entries_ = entries.build()
    return Snapshot(
        generation, built_ms, time.monotonic(), entries_, body, stats, groups, keys, length, _tasks=[tuple(tasks)]
    )


async def update_snapshot(
    generation: int,
    previous: Snapshot,
    touched: Mapping[str, TaskView | None],
    built_ms: int,
    etag_prefix: str,
    stats: ScanStats | None = None,
) -> Snapshot:
    """The next snapshot when only the tasks of `touched` may differ from `previous` (id -> its view now, None: no
    longer running): what a change feed's batch made, or a scan that changed few tasks (`stats`: its figures; a
    batch keeps the previous snapshot's). Its cost follows the changes, not the number of tasks: each
    touched task leaves the segment it was in and enters the one it belongs to now (`order.relocate`), only those
    segments are cut again, and the task index is the previous one with the changes layered over it."""
    known = previous.entries
    changed: dict[str, Entry | None] = {}
    for task_id, view in touched.items():
        old = known.get(task_id)
        if (old.view if old is not None else None) is not view:
            changed[task_id] = None if view is None else Entry(view, task_head(view))
    stats = previous.stats if stats is None else stats
    if not changed:
        return dataclasses.replace(
            previous, generation=generation, built_ms=built_ms, built_monotonic=time.monotonic(), stats=stats
        )
    if not previous.groups:
        tasks = sorted((entry.view for entry in changed.values() if entry is not None), key=task_key)
        return await build_snapshot(generation, tasks, stats, built_ms, previous, etag_prefix)
    groups, keys, change = relocate(previous.groups, previous.group_keys, known, changed)
    length = previous.groups_length + change
    entries = known.with_changes(changed)
    body = _rendered(groups, length, len(entries), etag_prefix, generation)
    return Snapshot(generation, built_ms, time.monotonic(), entries, body, stats, groups, keys, length)


def _rendered(groups: tuple[Group, ...], length: int, total: int, etag_prefix: str, generation: int) -> Rendered:
    """The running list's envelope around `groups`' tasks (`length` bytes, each after a separator)."""
    body = assemble_runs(_prefix(total), functools.partial(chunk_runs, groups), length, SEPARATOR, _SUFFIX)
    return Rendered(body, f'"{etag_prefix}-{generation}"')


def _prefix(total: int) -> bytes:
    # the envelope and RunningTasks up to its task list, from the shapes themselves
    return OK_PREFIX + _encode(RunningTasks(total_tasks=total, tasks=[]))[: -len(b"]}")]


def _same_tasks(old: tuple[TaskView, ...], new: list[TaskView]) -> bool:
    # A view is a new object whenever anything served changes, so identity is enough.
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))
