"""The shape of the stats endpoint's figures, each with its unit and what it is computed over."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.shapes.common import Count, Time

Seconds = Annotated[float, msgspec.Meta(ge=0)]


class Distribution(msgspec.Struct):
    """Percentiles (linear interpolation between closest ranks) and mean, in seconds; null without runs."""

    count: Count
    p50: Seconds | None
    p90: Seconds | None
    p99: Seconds | None
    mean: Seconds | None


class ThroughputWindow(msgspec.Struct, rename="camel"):
    """Finished runs per minute over one window ending at the snapshot's build time."""

    window_minutes: int
    finished: Annotated[Count, msgspec.Meta(description="runs whose endTime is within the window")]
    per_minute: Annotated[float, msgspec.Meta(ge=0)]
    covered_minutes: Annotated[float, msgspec.Meta(ge=0)]
    complete: Annotated[
        bool,
        msgspec.Meta(
            description="false while the history covers less than the window or evicted runs that ended within it: "
            "the figure is then a lower bound"
        ),
    ]


class Throughput(msgspec.Struct, forbid_unknown_fields=True):
    """The windows of service.query.stats.WINDOWS_MINUTES."""

    last5m: ThroughputWindow
    last15m: ThroughputWindow
    last60m: ThroughputWindow


class DurationSeconds(msgspec.Struct, rename="camel", kw_only=True):
    unit: Literal["s"] = "s"
    over: str
    all: Distribution
    by_outcome: dict[str, Distribution]  # every outcome (service.domain.vocabulary.OUTCOMES)


class RunningFigures(msgspec.Struct, rename="camel"):
    total: Count
    by_status: dict[str, Count]  # every configured running status
    stalled: Count
    stall_after_seconds: Count


class FinishedFigures(msgspec.Struct, rename="camel"):
    history_since: Time
    history_size: int
    kept: Annotated[Count, msgspec.Meta(description="runs the history still holds")]
    evicted: Annotated[Count, msgspec.Meta(description="runs the bound has dropped")]
    by_outcome: dict[str, Count]  # runs since the service started, evicted ones included, for every outcome
    throughput: Throughput
    duration_seconds: DurationSeconds


class ProgressRate(msgspec.Struct, kw_only=True):
    """Per running task, progress gained per minute from its first observed progress to its latest change; mean
    and median over the tasks that have such a rate."""

    unit: Literal["%/min"] = "%/min"
    over: str
    tasks: Count
    mean: float | None
    median: float | None


class TaskStats(msgspec.Struct, rename="camel"):
    """Figures as of the current snapshot (asOf is its build time)."""

    as_of: Time
    snapshot_generation: Annotated[int, msgspec.Meta(ge=1)]
    running: RunningFigures
    finished: FinishedFigures
    progress_rate: ProgressRate
