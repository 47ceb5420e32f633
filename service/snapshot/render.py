"""A running task's JSON, as `service.shapes.tasks.Task` says: its head rendered from the struct, its file list
as stored."""

from __future__ import annotations

import msgspec
from msgspec import UNSET

from service.domain.times import format_time
from service.domain.tracker import TaskView
from service.shapes.tasks import TaskHead

_encode = msgspec.json.Encoder().encode
FILE_LIST_KEY = b',"fileList":'


def task_head(view: TaskView) -> bytes:
    """The task's JSON object up to and including `"fileList":`, which comes last (Task's field order)."""
    head = TaskHead(
        task_id=view.task_id,
        client_id=view.client_id,
        status=view.process,
        process=view.process,
        total_progress=view.total_progress,
        start_time=format_time(view.start_ms),
        last_update_time=format_time(view.update_ms),
        estimated_completion_time=UNSET if view.eta_ms is None else format_time(view.eta_ms),
        stalled=view.stalled,
    )
    return _encode(head)[:-1] + FILE_LIST_KEY


def task_json(view: TaskView, head: bytes) -> bytes:
    """The task's whole JSON object from its head."""
    return b"".join((head, view.file_list, b"}"))
