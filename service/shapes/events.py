"""The shapes of change: the event stream's `snapshot` and `changes` events, the running list's `since=` answer,
and what cache-stats says of the streams."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.shapes.common import Count
from service.shapes.tasks import ProjectedTask

__all__ = ["RemovedTask", "RunningChanges", "RunningSnapshot", "StreamsInfo", "TaskChanges"]

Generation = Annotated[int, msgspec.Meta(ge=0, description="the snapshot's generation (X-Snapshot-Generation)")]
# How a task left a view: the history's outcome of its run, or `filtered-out` (still running, no longer matching).
RemovalOutcome = Literal["completed", "failed", "vanished", "other", "filtered-out"]


class RemovedTask(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """A task that left the view since the generation before."""

    task_id: str
    outcome: Annotated[
        RemovalOutcome,
        msgspec.Meta(description="how its run ended (see /tasks/finished), or filtered-out: running, not matching"),
    ]


class RunningSnapshot(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """The event stream's `snapshot` event: the running list's `data` for the stream's filters and projection (no
    pages, the default order), with its generation."""

    generation: Generation
    total_tasks: Count
    tasks: list[ProjectedTask]


class TaskChanges(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """The event stream's `changes` event: what changed in the view at `generation`. Applied to the tasks held
    (replace or add each upserted task by its taskId, drop each removed one) they give the running list's tasks
    at that generation."""

    generation: Generation
    upserted: Annotated[
        list[ProjectedTask], msgspec.Meta(description="tasks new to the view or served differently, newest start first")
    ]
    removed: list[RemovedTask]


class RunningChanges(TaskChanges, kw_only=True):
    """The running list with `since=<generation>`: what changed after that generation up to `generation`; when
    that generation is no longer held (or unknown), `reset` is true and `upserted` holds every task of the view,
    to replace what is held."""

    reset: bool


class StreamsInfo(msgspec.Struct, rename="camel"):
    """The event streams: open now and at most, the distinct views they watch, and counters since start."""

    open: Count
    max_streams: Count
    views: Annotated[Count, msgspec.Meta(description="distinct filters + projection watched now")]
    views_shared: Annotated[Count, msgspec.Meta(description="views watched by more than one stream now")]
    opened: Count
    refused: Annotated[Count, msgspec.Meta(description="streams refused: max_streams open")]
    events: Count
    bytes: Count
    heartbeats: Count
    resets: Annotated[Count, msgspec.Meta(description="fresh snapshots sent for resumes not held and slow streams")]
    events_dropped: Annotated[Count, msgspec.Meta(description="queued events discarded by those resets")]
    dropped: Annotated[Count, msgspec.Meta(description="streams the service ended: shutdown or a failed send")]
    encodes: Annotated[Count, msgspec.Meta(description="change events encoded, once per view")]
    deliveries: Annotated[Count, msgspec.Meta(description="change events queued, one per stream")]
    held_generations: Annotated[Count, msgspec.Meta(description="change sets held for resumes and since=")]
