from __future__ import annotations

import asyncio
import random
import statistics

import msgspec
import pytest

from service.domain.history import History
from service.domain.times import format_time
from service.domain.tracker import Departure, TaskView
from service.query.stats import percentile, task_stats, throughput
from service.snapshot.snapshot import build_snapshot
from service.source.scanner import ScanStats
from tests.domain.test_history import departed

T0 = 1_795_000_000_000
MINUTE = 60_000


def test_percentile_matches_the_inclusive_method_of_the_standard_library() -> None:
    rng = random.Random(5)
    for n in (2, 3, 10, 101, 997):
        values = sorted(rng.uniform(0, 1000) for _ in range(n))
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        for p in (50, 90, 99):
            assert percentile(values, p) == pytest.approx(cuts[p - 1])
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0 and percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)


def history_with_ends(ends_minutes_ago: list[float], now: int, started: int, size: int = 1000) -> History:
    history = History(size, clock=lambda: started)
    history.record([departed(f"t{i}", "completed", T0, now - int(m * MINUTE)) for i, m in enumerate(ends_minutes_ago)])
    return history


def test_throughput_counts_ends_within_each_window() -> None:
    now = T0 + 120 * MINUTE
    history = history_with_ends([0.5, 1, 4.9, 5.1, 14, 16, 59, 61, 200], now, started=T0)
    figures = msgspec.to_builtins(throughput(history, now))
    assert [figures[k]["finished"] for k in ("last5m", "last15m", "last60m")] == [3, 5, 7]
    assert figures["last5m"]["perMinute"] == 0.6
    assert figures["last60m"]["perMinute"] == round(7 / 60, 3)
    assert all(f["complete"] and f["coveredMinutes"] == f["windowMinutes"] for f in figures.values())


def test_throughput_soon_after_startup_is_marked_incomplete() -> None:
    now = T0 + 10 * MINUTE
    figures = msgspec.to_builtins(throughput(history_with_ends([1, 2], now, started=T0), now))
    assert figures["last5m"]["complete"] is True
    assert (figures["last15m"]["complete"], figures["last15m"]["coveredMinutes"]) == (False, 10.0)
    assert figures["last60m"]["finished"] == 2


def test_throughput_after_eviction_inside_a_window_is_a_lower_bound() -> None:
    now = T0 + 120 * MINUTE
    # the oldest record by detection order ended 10 minutes ago and is evicted by a bound of 2
    history = history_with_ends([10, 1, 2], now, started=T0, size=2)
    figures = msgspec.to_builtins(throughput(history, now))
    assert figures["last5m"]["complete"] is True
    assert figures["last15m"]["complete"] is False
    assert figures["last15m"]["finished"] == 2


def running_view(task_id: str, process: str, stalled: bool, rate: float | None) -> TaskView:
    return TaskView(task_id, "", process, 50, T0, T0, None, 1, b"[]", stalled, rate)


def test_stats_of_a_snapshot_and_a_history() -> None:
    views = [
        running_view("a", "processing", False, 10.0),
        running_view("b", "processing", True, None),
        running_view("c", "pending", False, 2.0),
        running_view("d", "processing", True, 3.0),
    ]
    snapshot = asyncio.run(build_snapshot(7, views, ScanStats(), T0 + 30 * MINUTE, None, "x"))
    history = History(100, clock=lambda: T0)
    history.record(
        [
            departed("ok-1", "completed", T0, T0 + 10_000),
            departed("ok-2", "complete", T0, T0 + 30_000),
            departed("bad", "failed", T0, T0 + 20_000),
            Departure(running_view("gone", "processing", False, None), T0 + 40_000, None, T0 + 40_000),
        ]
    )
    stats = msgspec.to_builtins(task_stats(snapshot, history, ("pending", "processing", "running"), 300))
    assert stats["asOf"] == format_time(T0 + 30 * MINUTE)
    assert stats["snapshotGeneration"] == 7
    assert stats["running"] == {
        "total": 4,
        "byStatus": {"pending": 1, "processing": 3, "running": 0},
        "stalled": 2,
        "stallAfterSeconds": 300,
    }
    finished = stats["finished"]
    assert finished["byOutcome"] == {"completed": 2, "failed": 1, "vanished": 1, "other": 0}
    assert finished["kept"] == 4
    durations = finished["durationSeconds"]
    assert durations["all"]["count"] == 4
    assert (durations["all"]["p50"], durations["all"]["p90"], durations["all"]["p99"]) == (25.0, 37.0, 39.7)
    assert durations["byOutcome"]["completed"] == {"count": 2, "p50": 20.0, "p90": 28.0, "p99": 29.8, "mean": 20.0}
    assert durations["byOutcome"]["other"]["p50"] is None
    assert finished["throughput"]["last60m"]["finished"] == 4
    rate = stats["progressRate"]
    assert (rate["unit"], rate["tasks"], rate["mean"], rate["median"]) == ("%/min", 3, 5.0, 3.0)


def test_stats_with_nothing_yet() -> None:
    snapshot = asyncio.run(build_snapshot(1, [], ScanStats(), T0, None, "x"))
    stats = msgspec.to_builtins(task_stats(snapshot, History(10, clock=lambda: T0), ("pending",), 300))
    assert stats["running"]["total"] == 0
    assert stats["finished"]["durationSeconds"]["all"] == {
        "count": 0,
        "p50": None,
        "p90": None,
        "p99": None,
        "mean": None,
    }
    assert stats["progressRate"]["mean"] is None
