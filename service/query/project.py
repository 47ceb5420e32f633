"""Projection: which task fields an answer carries and how its file list is shaped (`fields`, `fileList`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import msgspec
from msgspec import UNSET

from service.domain.tasks import FileEntry
from service.domain.times import format_time
from service.domain.tracker import TaskView
from service.domain.vocabulary import FILE_OPERATES, FILE_STATUSES
from service.query.params import Params, QueryError, parse_choices
from service.shapes.tasks import FileSummary, ProjectedTask, Task
from service.snapshot.render import FILE_LIST_KEY, task_json

# The task object's fields in the contract's order, as the shape names them; `fileList` is the file part.
TASK_FIELDS = tuple(field.encode_name for field in msgspec.structs.fields(Task))
BASE_FIELDS = TASK_FIELDS[:-1]
FILE_LIST_MODES = ("full", "summary", "none")

_encode = msgspec.json.Encoder().encode
_entries_decoder = msgspec.json.Decoder(list[FileEntry])


@dataclass(frozen=True, slots=True)
class Projection:
    """Which task fields a response carries and how its file list is shaped."""

    fields: tuple[str, ...] = BASE_FIELDS  # in contract order, without fileList
    file_list: str = "full"  # full | summary | none

    @property
    def is_default(self) -> bool:
        return self.fields == BASE_FIELDS and self.file_list == "full"


def parse_projection(params: Params) -> Projection:
    """`fields` (a subset of the task fields) and `fileList=full|summary|none`.

    Without `fields` every field is served. A `fields` list without fileList drops the file part unless
    `fileList` asks for it explicitly."""
    fields = parse_choices(params, "fields", TASK_FIELDS)
    mode = params.single("fileList")
    if mode is not None and mode not in FILE_LIST_MODES:
        raise QueryError("fileList", mode, "one of " + ", ".join(FILE_LIST_MODES))
    if fields is None:
        return Projection(BASE_FIELDS, mode or "full")
    base = tuple(name for name in BASE_FIELDS if name in fields)
    if mode is None:
        mode = "full" if "fileList" in fields else "none"
    return Projection(base, mode)


def file_summary(view: TaskView) -> FileSummary:
    """Counts of a task's files per status and per operation, plus the total; known names always present."""
    entries = _entries_decoder.decode(view.file_list)
    by_status = Counter(entry.status for entry in entries)
    by_operate = Counter(entry.operate for entry in entries)
    return FileSummary(len(entries), _counts(by_status, FILE_STATUSES), _counts(by_operate, FILE_OPERATES))


def _counts(counter: Counter[str], known: Sequence[str]) -> dict[str, int]:
    counts = {name: counter.get(name, 0) for name in known}
    counts.update((name, counter[name]) for name in sorted(counter) if name not in counts)
    return counts


def render_task(view: TaskView, head: bytes, projection: Projection) -> bytes:
    """A task's JSON under `projection`, from its rendered `head`; the default one is the head and the stored file
    list, never re-encoded."""
    if projection.is_default:
        return task_json(view, head)
    if projection.fields == BASE_FIELDS:
        # every field but a different file part: the head without its `,"fileList":`
        head = head[: -len(FILE_LIST_KEY)]
        if projection.file_list == "none":
            return head + b"}"
        return b"".join((head, b',"fileSummary":', _encode(file_summary(view)), b"}"))
    wanted = projection.fields
    task = ProjectedTask(
        task_id=view.task_id if "taskId" in wanted else UNSET,
        client_id=view.client_id if "clientId" in wanted else UNSET,
        status=view.process if "status" in wanted else UNSET,
        process=view.process if "process" in wanted else UNSET,
        total_progress=view.total_progress if "totalProgress" in wanted else UNSET,
        start_time=format_time(view.start_ms) if "startTime" in wanted else UNSET,
        last_update_time=format_time(view.update_ms) if "lastUpdateTime" in wanted else UNSET,
        # omitted when unknown, as in the whole task
        estimated_completion_time=UNSET
        if view.eta_ms is None or "estimatedCompletionTime" not in wanted
        else format_time(view.eta_ms),
        stalled=view.stalled if "stalled" in wanted else UNSET,
        # the stored list goes out verbatim: msgspec writes a Raw as it is
        file_list=cast(list[FileEntry], msgspec.Raw(view.file_list)) if projection.file_list == "full" else UNSET,
        file_summary=file_summary(view) if projection.file_list == "summary" else UNSET,
    )
    return _encode(task)
