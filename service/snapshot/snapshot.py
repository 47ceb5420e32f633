"""An immutable snapshot of the running tasks with its pre-rendered body, replaced by reference."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import msgspec

from service.domain.tracker import TaskView
from service.shapes.envelope import OK_PREFIX
from service.shapes.tasks import RunningTasks
from service.snapshot.body import Rendered, RenderedBody, Segment, render_body
from service.snapshot.render import task_head
from service.source.scanner import ScanStats

# A task with its JSON head, rendered when the task's view changed; the same tuple while it does not.
Entry = tuple[TaskView, bytes]
_encode = msgspec.json.Encoder().encode
# The event loop gets a turn after this much work while a snapshot's tasks are gathered: a task looked up counts
# one, a head rendered as many as _RENDER_WORK lookups (about what rendering one costs).
_WORK_PER_TURN = 4096
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
        body, segments = previous.rendered, previous.segments
    else:
        # the envelope and RunningTasks up to its task list, from the shapes themselves
        prefix = OK_PREFIX + _encode(RunningTasks(total_tasks=len(tasks), tasks=[]))[: -len(b"]}")]
        made, segments = await render_body(
            prefix,
            list(entries.values()),
            _parts,
            b",",
            b"]}}",
            ends_segment=_ends_segment,
            previous=() if previous is None else previous.segments,
        )
        body = Rendered(made, f'"{etag_prefix}-{generation}"')
    return Snapshot(generation, built_ms, time.monotonic(), tuple(tasks), entries, body, stats, segments)


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
