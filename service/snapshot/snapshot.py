"""An immutable snapshot of the running tasks with its pre-rendered body, replaced by reference."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from service.domain.tracker import TaskView
from service.http.envelope import ok_body_prefix
from service.snapshot.body import RenderedBody, Segment, render_body
from service.source.scanner import ScanStats


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: int
    built_ms: int  # wall clock, for people
    built_monotonic: float  # for the age, immune to clock steps
    tasks: tuple[TaskView, ...]
    body: RenderedBody  # the whole success envelope, rendered once, in chunks
    etag: str  # strong: equal bodies have equal tags; a compressed variant adds its encoding (`variant_etag`)
    stats: ScanStats
    segments: tuple[Segment, ...] = field(default=(), compare=False, repr=False)  # how `body` was cut, for the next
    # response headers by (status, encoding, max-age), made on first use (service.http.delivery)
    answer_headers: dict[tuple[int, str | None, int], list[tuple[bytes, bytes]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def age(self, now_monotonic: float | None = None) -> float:
        return (time.monotonic() if now_monotonic is None else now_monotonic) - self.built_monotonic

    def is_fresh(self, ttl_seconds: float, now_monotonic: float | None = None) -> bool:
        return self.age(now_monotonic) < ttl_seconds

    def variant_etag(self, encoding: str | None) -> str:
        """The strong ETag of the body as sent with `encoding` (None: as is)."""
        return self.etag if encoding is None else f'{self.etag[:-1]}-{encoding}"'


async def build_snapshot(
    generation: int,
    tasks: list[TaskView],
    stats: ScanStats,
    built_ms: int,
    previous: Snapshot | None,
    etag_prefix: str,
) -> Snapshot:
    """A snapshot of `tasks`; the body and ETag of `previous` are kept when the tasks rendered are the same, and
    the segments of its body that hold the same tasks are taken as they are.

    The body is rendered with a yield to the event loop now and then: a body of hundreds of megabytes never
    blocks the requests served meanwhile."""
    if previous is not None and _same_tasks(previous.tasks, tasks):
        body, etag, segments = previous.body, previous.etag, previous.segments
    else:
        body, segments = await render_body(
            ok_body_prefix(len(tasks)),
            tasks,
            TaskView.parts,
            b",",
            b"]}}",
            ends_segment=_ends_segment,
            previous=() if previous is None else previous.segments,
        )
        etag = f'"{etag_prefix}-{generation}"'
    return Snapshot(generation, built_ms, time.monotonic(), tuple(tasks), body, etag, stats, segments)


def _ends_segment(view: TaskView) -> bool:
    # One task in 64 ends a segment, by its id: the cuts stay put while other tasks change, come and go. With
    # tasks of a few kB, segments are about as large as the body's chunks (a send each): a poll of a large body
    # makes as few sends as before, and one changed task costs a copy of ~200 kB, not of the body.
    return hash(view.task_id) & 63 == 0


def _same_tasks(old: tuple[TaskView, ...], new: list[TaskView]) -> bool:
    # A view is re-rendered into a new object whenever anything served changes, so identity is enough.
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))
