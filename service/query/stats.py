"""The stats endpoint's figures: running tasks by status, stalled, finished by outcome, throughput over recent
windows, duration percentiles of finished tasks and the progress rate of running tasks, each with its unit."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

from service.domain.history import History
from service.domain.times import format_time
from service.domain.vocabulary import OUTCOMES
from service.shapes.stats import (
    Distribution,
    DurationSeconds,
    FinishedFigures,
    ProgressRate,
    RunningFigures,
    TaskStats,
    Throughput,
    ThroughputWindow,
)
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


def _distribution(seconds: list[float]) -> Distribution:
    ordered = sorted(seconds)
    if not ordered:
        return Distribution(0, None, None, None, None)
    p50, p90, p99 = (round(percentile(ordered, p), 3) for p in PERCENTILES)
    return Distribution(len(ordered), p50, p90, p99, round(statistics.fmean(ordered), 3))


def throughput(history: History, now_ms: int) -> Throughput:
    """Finished tasks per minute over the last 5, 15 and 60 minutes: the tasks that ended within the window,
    divided by its length.

    `coveredMinutes` is the part of the window the history covers (less than the window soon after startup);
    `complete` is false when the history did not cover all of it, or evicted records that ended within it: the
    figure is then a lower bound."""
    ends = [record.end_ms for record in history.newest_first()]
    covered_ms = max(0, now_ms - history.started_ms)
    windows: list[ThroughputWindow] = []
    for minutes in WINDOWS_MINUTES:
        window_ms = minutes * 60_000
        since = now_ms - window_ms
        count = sum(1 for end in ends if end > since)
        evicted_inside = history.evicted_newest_end_ms is not None and history.evicted_newest_end_ms > since
        windows.append(
            ThroughputWindow(
                window_minutes=minutes,
                finished=count,
                per_minute=round(count / minutes, 3),
                covered_minutes=round(min(window_ms, covered_ms) / 60_000, 3),
                complete=covered_ms >= window_ms and not evicted_inside,
            )
        )
    return Throughput(*windows)


def task_stats(snapshot: Snapshot, history: History, running_statuses: Sequence[str], stall_after: int) -> TaskStats:
    """Every figure of the stats endpoint as of `snapshot` (its build time is `asOf`)."""
    now_ms = snapshot.built_ms
    by_status = Counter(task.process for task in snapshot.tasks)
    rates = [task.rate for task in snapshot.tasks if task.rate is not None]
    records = history.newest_first()
    by_outcome: dict[str, list[float]] = {outcome: [] for outcome in OUTCOMES}
    for record in records:
        by_outcome[record.outcome].append(record.duration_ms / 1000)
    every = [seconds for values in by_outcome.values() for seconds in values]
    return TaskStats(
        as_of=format_time(now_ms),
        snapshot_generation=snapshot.generation,
        running=RunningFigures(
            total=len(snapshot.tasks),
            by_status={status: by_status.get(status, 0) for status in running_statuses},
            stalled=sum(1 for task in snapshot.tasks if task.stalled),
            stall_after_seconds=stall_after,
        ),
        finished=FinishedFigures(
            history_since=format_time(history.started_ms),
            history_size=history.size,
            kept=len(records),
            evicted=history.evicted,
            by_outcome={outcome: history.totals.get(outcome, 0) for outcome in OUTCOMES},
            throughput=throughput(history, now_ms),
            duration_seconds=DurationSeconds(
                over="kept history",
                all=_distribution(every),
                by_outcome={outcome: _distribution(values) for outcome, values in by_outcome.items()},
            ),
        ),
        progress_rate=ProgressRate(
            over="running tasks with an observed rate (progress rose between two observations)",
            tasks=len(rates),
            mean=round(statistics.fmean(rates), 3) if rates else None,
            median=round(statistics.median(rates), 3) if rates else None,
        ),
    )
