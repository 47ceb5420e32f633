"""An immutable snapshot of the running tasks with its pre-rendered body, replaced by reference."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from service.domain.tracker import TaskView
from service.shapes.envelope import OK_PREFIX
from service.shapes.tasks import RunningTasks
from service.snapshot.body import Rendered, RenderedBody, Segment, assemble, cut_segments, render_body
from service.snapshot.render import task_head
from service.source.scanner import ScanStats

# A task with its JSON head, rendered when the task's view changed; the same tuple while it does not.
Entry = tuple[TaskView, bytes]
# Where a task stands in the serving order (newest start first, ties by task id).
TaskKey = tuple[int, str]
_encode = msgspec.json.Encoder().encode
# The event loop gets a turn after this much work while a snapshot's tasks are gathered: a task looked up counts
# one, a head rendered as many as _RENDER_WORK lookups (about what rendering one costs).
_WORK_PER_TURN = 4096
_SEPARATOR, _SUFFIX = b",", b"]}}"
_RENDER_WORK = 40


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: int
    built_ms: int  # wall clock, for people
    built_monotonic: float  # for the age, immune to clock steps
    tasks: tuple[TaskView, ...]  # newest start first
    entries: dict[str, Entry] = field(compare=False, repr=False)  # task id -> its view and head; read only
    rendered: Rendered = field(compare=False, repr=False)  # the running list's whole success envelope
    stats: ScanStats = field(compare=False)
    segments: tuple[Segment, ...] = field(default=(), compare=False, repr=False)  # how the body was cut
    segment_keys: tuple[TaskKey, ...] = field(default=(), compare=False, repr=False)  # each segment's first task

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
        return self.entries[view.task_id][1]


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
    known = {} if previous is None else previous.entries
    entries: dict[str, Entry] = {}
    work = 0
    for view in tasks:
        entry = known.get(view.task_id)
        if entry is None or entry[0] is not view:
            entry = (view, task_head(view))
            work += _RENDER_WORK
        entries[view.task_id] = entry
        work += 1
        if work >= _WORK_PER_TURN:
            work = 0
            await asyncio.sleep(0)
    if previous is not None and _same_tasks(previous.tasks, tasks):
        body, segments, keys = previous.rendered, previous.segments, previous.segment_keys
    else:
        made, segments = await render_body(
            _prefix(len(tasks)),
            list(entries.values()),
            _parts,
            _SEPARATOR,
            _SUFFIX,
            ends_segment=_ends_segment,
            previous=() if previous is None else previous.segments,
        )
        body = Rendered(made, f'"{etag_prefix}-{generation}"')
        keys = _segment_keys(segments)
    return Snapshot(generation, built_ms, time.monotonic(), tuple(tasks), entries, body, stats, segments, keys)


async def update_snapshot(
    generation: int,
    previous: Snapshot,
    touched: Mapping[str, TaskView | None],
    built_ms: int,
    etag_prefix: str,
) -> Snapshot:
    """The next snapshot when only the tasks of `touched` may differ from `previous` (id -> its view now, None: no
    longer running): what a change feed's batch made. Its cost follows the changes, not the number of tasks: the
    order is `previous`'s with the touched tasks taken out and put back in place, only they are rendered, and only
    the segments of the body that held them or now hold them are cut again (found by their first task's place in
    the order); every other segment is taken as it is."""
    known = previous.entries
    changed = {task_id: view for task_id, view in touched.items() if known.get(task_id, (None,))[0] is not view}
    if not changed:
        return dataclasses.replace(previous, generation=generation, built_ms=built_ms, built_monotonic=time.monotonic())
    entries = dict(known)
    tasks = list(previous.tasks)
    moved: list[TaskKey] = []  # the places that changed: where touched tasks were, and where they are now
    for task_id, view in changed.items():
        old = known.get(task_id)
        if old is not None:
            key = task_key(old[0])
            del tasks[bisect.bisect_left(tasks, key, key=task_key)]
            moved.append(key)
        if view is None:
            entries.pop(task_id, None)
        else:
            entries[task_id] = (view, task_head(view))
            bisect.insort(tasks, view, key=task_key)
            moved.append(task_key(view))
    if not previous.segments:
        return await build_snapshot(generation, tasks, previous.stats, built_ms, previous, etag_prefix)
    segments, keys = previous.segments, previous.segment_keys
    affected = sorted({max(bisect.bisect_right(keys, key) - 1, 0) for key in moved})
    made: list[Segment] = []
    done = 0
    for first, last in _runs(affected):
        made += segments[done:first]
        low = 0 if first == 0 else bisect.bisect_left(tasks, keys[first], key=task_key)
        high = len(tasks) if last + 1 == len(segments) else bisect.bisect_left(tasks, keys[last + 1], key=task_key)
        run = [entries[view.task_id] for view in tasks[low:high]]
        made += await cut_segments(
            run, _parts, _SEPARATOR, ends_segment=_ends_segment, previous=segments[first : last + 1]
        )
        done = last + 1
    made += segments[done:]
    body = Rendered(assemble(_prefix(len(tasks)), made, _SEPARATOR, _SUFFIX), f'"{etag_prefix}-{generation}"')
    return Snapshot(
        generation,
        built_ms,
        time.monotonic(),
        tuple(tasks),
        entries,
        body,
        previous.stats,
        tuple(made),
        _segment_keys(made),
    )


def task_key(view: TaskView) -> TaskKey:
    return (-view.start_ms, view.task_id)


def _prefix(total: int) -> bytes:
    # the envelope and RunningTasks up to its task list, from the shapes themselves
    return OK_PREFIX + _encode(RunningTasks(total_tasks=total, tasks=[]))[: -len(b"]}")]


def _segment_keys(segments: Sequence[Segment]) -> tuple[TaskKey, ...]:
    return tuple(task_key(segment.items[0][0]) for segment in segments)  # type: ignore[index]


def _runs(indexes: list[int]) -> list[tuple[int, int]]:
    """Sorted indexes as runs of consecutive ones: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    runs: list[tuple[int, int]] = []
    for index in indexes:
        if runs and runs[-1][1] + 1 == index:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def _parts(entry: Entry) -> tuple[bytes, bytes, bytes]:
    # the file list is held once, in the view; bodies are joined from these parts
    return entry[1], entry[0].file_list, b"}"


def _ends_segment(entry: Entry) -> bool:
    # One task in 64 ends a segment, by its id: the cuts stay put while other tasks change, come and go, and a
    # changed task costs a copy of its segment, not of the body.
    return hash(entry[0].task_id) & 63 == 0


def _same_tasks(old: tuple[TaskView, ...], new: list[TaskView]) -> bool:
    # A view is a new object whenever anything served changes, so identity is enough.
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))
