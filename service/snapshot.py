"""An immutable snapshot of the running tasks with its pre-rendered body, replaced by reference."""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.responses import ok_body_prefix
from service.scanner import ScanStats
from service.tracker import TaskView


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: int
    built_ms: int  # wall clock, for people
    built_monotonic: float  # for the age, immune to clock steps
    tasks: tuple[TaskView, ...]
    body: bytes  # the whole success envelope, rendered once
    etag: str  # strong: equal bodies have equal tags
    stats: ScanStats

    def age(self, now_monotonic: float | None = None) -> float:
        return (time.monotonic() if now_monotonic is None else now_monotonic) - self.built_monotonic

    def is_fresh(self, ttl_seconds: float, now_monotonic: float | None = None) -> bool:
        return self.age(now_monotonic) < ttl_seconds


def build_snapshot(
    generation: int,
    tasks: list[TaskView],
    stats: ScanStats,
    built_ms: int,
    previous: Snapshot | None,
    etag_prefix: str,
) -> Snapshot:
    """A snapshot of `tasks`; the body and ETag of `previous` are kept when the tasks rendered are the same."""
    built_monotonic = time.monotonic()
    if previous is not None and _same_tasks(previous.tasks, tasks):
        body, etag = previous.body, previous.etag
    else:
        body = b"".join((ok_body_prefix(len(tasks)), b",".join(t.json for t in tasks), b"]}}"))
        etag = f'"{etag_prefix}-{generation}"'
    return Snapshot(generation, built_ms, built_monotonic, tuple(tasks), body, etag, stats)


def _same_tasks(old: tuple[TaskView, ...], new: list[TaskView]) -> bool:
    # A view is re-rendered into a new object whenever anything served changes, so identity is enough.
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))
