"""bench.collector on a tiny workload, in-process (no Redis, quick: it runs with the unit tests, unlike the
benches marked `bench`): one pair of rows per threshold, against the first. Timings are the bench's business."""

from __future__ import annotations

import asyncio
import gc

from bench import collector


def test_collector_reports_each_threshold_against_the_first() -> None:
    rows = asyncio.run(collector.run(3_000, [700, 5_000]))
    assert [row.section for row in rows] == ["young threshold 700"] * 2 + ["young threshold 5,000"] * 2
    assert rows[0].ratio == "1.00x" and rows[1].ratio == "1.0x"
    assert all(row.value.endswith(" ms") and float(row.value[:-3].replace(",", "")) > 0 for row in rows)
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the bench leaves the collector on, nothing frozen
