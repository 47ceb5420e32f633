"""The words the producer and the API share: task statuses, file statuses and operations, run outcomes."""

from __future__ import annotations

# `process` values the producer writes for a finished task; both spellings of "finished well" occur.
FINISHED_STATUSES = ("complete", "completed", "failed")
# `process` values the producer writes while a task runs; the default `running_statuses` add `running`, which
# readers accept though the producer never writes it.
PRODUCER_RUNNING_STATUSES = ("pending", "processing")
RUNNING_STATUSES = (*PRODUCER_RUNNING_STATUSES, "running")
# A file entry's `status` (the producer writes the first four; readers also know `failed`) and `operate`.
FILE_STATUSES = ("pending", "processing", "completed", "unsupported", "failed")
FILE_OPERATES = ("add", "modify", "delete", "rename")
# How a run left the running state: a finished value, or its key gone (`vanished`); `other` is a status
# outside running_statuses that is none of the producer's finished ones.
OUTCOMES = ("completed", "failed", "vanished", "other")
# `complete` and `completed` both mean "finished well"; either name filters on that outcome.
OUTCOME_ALIASES = {"complete": "completed"}


def outcome_of(status: str | None) -> str:
    """The outcome of a run whose finished value has `status` (None: no finished value, the key is gone)."""
    if status is None:
        return "vanished"
    if status in ("complete", "completed"):
        return "completed"
    if status == "failed":
        return "failed"
    return "other"
