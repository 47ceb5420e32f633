"""The stats endpoint's figures: running tasks by status, stalled, finished by outcome, throughput over recent
windows, duration percentiles of finished tasks and the progress rate of running tasks, each with its unit."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from service.domain.history import OUTCOMES, History
from service.domain.tasks import format_time
from service.snapshot.snapshot import Snapshot

WINDOWS_MINUTES = (5, 15, 60)
PERCENTILES = (50, 90, 99)


def percentile(ordered: Sequence[float], p: float) -> float:
    """The p-th percentile of sorted values, linearly interpolated between closest ranks (numpy's default)."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _distribution(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    figures: dict[str, Any] = {"count": len(ordered)}
    for p in PERCENTILES:
        figures[f"p{p}"] = round(percentile(ordered, p), 3) if ordered else None
    figures["mean"] = round(statistics.fmean(ordered), 3) if ordered else None
    return figures


def throughput(history: History, now_ms: int) -> dict[str, Any]:
    """Finished tasks per minute over the last 5, 15 and 60 minutes: the tasks that ended within the window,
    divided by its length.

    `coveredMinutes` is the part of the window the history covers (less than the window soon after startup);
    `complete` is false when the history did not cover all of it, or evicted records that ended within it: the
    figure is then a lower bound."""
    ends = [record.end_ms for record in history.newest_first()]
    covered_ms = max(0, now_ms - history.started_ms)
    out: dict[str, Any] = {}
    for minutes in WINDOWS_MINUTES:
        window_ms = minutes * 60_000
        since = now_ms - window_ms
        count = sum(1 for end in ends if end > since)
        evicted_inside = history.evicted_newest_end_ms is not None and history.evicted_newest_end_ms > since
        out[f"last{minutes}m"] = {
            "windowMinutes": minutes,
            "finished": count,
            "perMinute": round(count / minutes, 3),
            "coveredMinutes": round(min(window_ms, covered_ms) / 60_000, 3),
            "complete": covered_ms >= window_ms and not evicted_inside,
        }
    return out


def task_stats(
    snapshot: Snapshot, history: History, running_statuses: Sequence[str], stall_after: int
) -> dict[str, Any]:
    """Every figure of the stats endpoint as of `snapshot` (its build time is `asOf`)."""
    now_ms = snapshot.built_ms
    by_status = Counter(task.process for task in snapshot.tasks)
    rates = [task.rate for task in snapshot.tasks if task.rate is not None]
    records = history.newest_first()
    by_outcome: dict[str, list[float]] = {outcome: [] for outcome in OUTCOMES}
    for record in records:
        by_outcome[record.outcome].append(record.duration_ms / 1000)
    every = [seconds for values in by_outcome.values() for seconds in values]
    return {
        "asOf": format_time(now_ms),
        "snapshotGeneration": snapshot.generation,
        "running": {
            "total": len(snapshot.tasks),
            "byStatus": {status: by_status.get(status, 0) for status in running_statuses},
            "stalled": sum(1 for task in snapshot.tasks if task.stalled),
            "stallAfterSeconds": stall_after,
        },
        "finished": {
            "historySince": format_time(history.started_ms),
            "historySize": history.size,
            "kept": len(records),
            "evicted": history.evicted,
            "byOutcome": {outcome: history.totals.get(outcome, 0) for outcome in OUTCOMES},
            "throughput": throughput(history, now_ms),
            "durationSeconds": {
                "unit": "s",
                "over": "kept history",
                "all": _distribution(every),
                "byOutcome": {outcome: _distribution(values) for outcome, values in by_outcome.items()},
            },
        },
        "progressRate": {
            "unit": "%/min",
            "over": "running tasks with an observed rate (progress rose between two observations)",
            "tasks": len(rates),
            "mean": round(statistics.fmean(rates), 3) if rates else None,
            "median": round(statistics.median(rates), 3) if rates else None,
        },
    }
