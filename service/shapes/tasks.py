"""The shapes of tasks as served: the running task, whole or projected, the running list, finished runs."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

from service.domain.tasks import FileEntry
from service.shapes.common import Count, PageNumber, Progress, Time

__all__ = [
    "FileEntry",
    "FileSummary",
    "FinishedTask",
    "FinishedTasks",
    "ProjectedTask",
    "RunningTasks",
    "Task",
    "TaskHead",
]

Outcome = Literal["completed", "failed", "vanished", "other"]  # service.domain.vocabulary.OUTCOMES
Eta = Annotated[Time, msgspec.Meta(description="omitted until a progress rate has been observed")]
Stalled = Annotated[
    bool,
    msgspec.Meta(
        description="true when the task's value has not changed for stall_after seconds, measured from lastUpdateTime"
    ),
]


class FileSummary(msgspec.Struct, rename="camel"):
    """A task's files counted (fileList=summary): known names always present, others added when they occur."""

    total: Count
    by_status: dict[str, Count]
    by_operate: dict[str, Count]


class TaskHead(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """A running task's fields before its file list, in the contract's order."""

    task_id: Annotated[str, msgspec.Meta(description="the key's suffix: the upload's X-Request-ID")]
    client_id: Annotated[str, msgspec.Meta(description="empty unless the producer writes one")]
    status: Annotated[str, msgspec.Meta(description="equal to process")]
    process: Annotated[str, msgspec.Meta(description="one of the configured running statuses")]
    total_progress: Progress
    start_time: Time
    last_update_time: Time
    estimated_completion_time: Eta | UnsetType = UNSET
    stalled: Stalled


class Task(TaskHead, kw_only=True):
    """A running task, complete: what the unfiltered list and a task by id without `fields` or `fileList`
    serve. Its file list comes last, so a task's JSON is its head followed by the stored list."""

    file_list: list[FileEntry]


class ProjectedTask(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """A running task as a query shapes it: every field of Task unless `fields` lists some (then only those, in
    the contract's order); the file list full, replaced by `fileSummary` (fileList=summary) or left out
    (fileList=none, or `fields` without fileList)."""

    task_id: str | UnsetType = UNSET
    client_id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET
    process: str | UnsetType = UNSET
    total_progress: Progress | UnsetType = UNSET
    start_time: Time | UnsetType = UNSET
    last_update_time: Time | UnsetType = UNSET
    estimated_completion_time: Eta | UnsetType = UNSET
    stalled: Stalled | UnsetType = UNSET
    file_list: list[FileEntry] | UnsetType = UNSET
    file_summary: FileSummary | UnsetType = UNSET


class RunningTasks(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """The running tasks that match, newest start first unless `sort` says otherwise. `page`, `pageSize` and
    `totalPages` are present exactly when `page` or `pageSize` is given."""

    total_tasks: Annotated[Count, msgspec.Meta(description="every match, not only this page")]
    page: PageNumber | UnsetType = UNSET
    page_size: PageNumber | UnsetType = UNSET
    total_pages: Annotated[Count, msgspec.Meta(description="ceil(totalTasks / pageSize); 0 when nothing matches")] | (
        UnsetType
    ) = UNSET
    tasks: list[ProjectedTask]


class FinishedTask(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """One run this service saw leave the running state."""

    task_id: str
    client_id: str
    outcome: Outcome
    status: Annotated[str, msgspec.Meta(description="the final value's; for a vanished run the last running one")]
    total_progress: Progress
    file_count: Count
    start_time: Time
    end_time: Annotated[
        Time,
        msgspec.Meta(
            description="the finished value's write time; for a vanished run the last time a scan read it running"
        ),
    ]
    duration_ms: Annotated[Count, msgspec.Meta(description="endTime - startTime, never negative")]
    last_seen_running_time: Time
    detected_time: Annotated[Time, msgspec.Meta(description="when the scan that found it no longer running ended")]


class FinishedTasks(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """One page of the finished runs that match, newest end first unless `sort` says otherwise."""

    total_tasks: Annotated[Count, msgspec.Meta(description="every match, not only this page")]
    page: PageNumber
    page_size: PageNumber
    total_pages: Annotated[Count, msgspec.Meta(description="ceil(totalTasks / pageSize); 0 when nothing matches")]
    history_since: Annotated[Time, msgspec.Meta(description="when this service started: the history is in memory")]
    history_size: Annotated[int, msgspec.Meta(description="runs kept at most (history_size)")]
    tasks: list[FinishedTask]
