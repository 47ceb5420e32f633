"""python -m bench.collector [--tasks 594000] [--thresholds 700 20000] [--per-shard 64]: what CPython's cyclic
collector costs a change feed's batches at a given size, in-process, for each young threshold in the same run.

The tasks and batches of bench.snapshot_update (synthetic running tasks, batches of 120 progress updates through
`update_snapshot`), the heap frozen after the build, and the service's settle (`heap.Settler.settle`: the young
generations collected, then frozen) after every 50 batches, a second's worth at the issue's write rate. For each
threshold: a batch's time (the collections it set off included), the time of the collections by generation
(`gc.callbacks`), and the settle's time. The baseline of each row is the first threshold's. Timings are
reported, never asserted."""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time
from collections import defaultdict
from typing import Any

import msgspec

from bench.snapshot_update import _build, _tasks
from bench.table import Row, render_text
from service.snapshot import entries
from service.snapshot.heap import Settler
from service.snapshot.snapshot import update_snapshot

BATCHES, KEYS, SETTLE_EVERY = 400, 120, 50


class _Timer:
    def __init__(self) -> None:
        self.by_generation: dict[int, list[float]] = defaultdict(list)
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.by_generation[info["generation"]].append(time.perf_counter() - self._started)


async def _run(count: int, threshold: int) -> tuple[float, dict[int, list[float]], list[float]]:
    rng = random.Random(1)
    tasks = _tasks(count, rng)
    ids = list(tasks)
    gc.disable()
    snapshot, _ = await _build(tasks, 1)
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    timer = _Timer()
    settler = Settler()
    batches: list[float] = []
    settles: list[float] = []
    gc.set_threshold(threshold, *before[1:])
    gc.enable()
    gc.callbacks.append(timer)
    try:
        for number in range(1, BATCHES + 1):
            touched = {}
            for task_id in rng.sample(ids, KEYS):
                view = tasks[task_id]
                tasks[task_id] = touched[task_id] = msgspec.structs.replace(
                    view, total_progress=view.total_progress % 99 + 1, update_ms=view.update_ms + 1000
                )
            started = time.perf_counter()
            snapshot = await update_snapshot(number + 1, snapshot, touched, 0, "b")
            batches.append(time.perf_counter() - started)
            if number % SETTLE_EVERY == 0:
                gc.callbacks.remove(timer)  # the settle's own collection is timed as the settle
                started = time.perf_counter()
                settler.settle()
                settles.append(time.perf_counter() - started)
                gc.callbacks.append(timer)
    finally:
        gc.callbacks.remove(timer)
        gc.set_threshold(*before)
        gc.unfreeze()
    del snapshot, tasks
    gc.collect()
    return statistics.median(batches), timer.by_generation, settles


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f} ms"


async def run(count: int, thresholds: list[int]) -> list[Row]:
    rows: list[Row] = []
    base: tuple[float, float] | None = None
    for threshold in thresholds:
        batch, by_generation, settles = await _run(count, threshold)
        collected = sum(sum(times) for times in by_generation.values()) / BATCHES
        per_batch = batch + sum(settles) / BATCHES
        if base is None:
            base = (per_batch, max(settles))
        section = f"young threshold {threshold:,}"
        rows.append(
            Row(
                section,
                "a batch + its share of the settles",
                _ms(per_batch),
                _ms(base[0]),
                f"{per_batch / base[0]:.2f}x",
                "—",
                None,
                f"batch median {_ms(batch)} (collections it set off: {_ms(collected)} a batch on average); "
                + ", ".join(
                    f"gen{g}: {len(t)} x median {_ms(statistics.median(t))}" for g, t in sorted(by_generation.items())
                ),
            )  # fmt: skip
        )
        rows.append(
            Row(
                section,
                f"the settle, every {SETTLE_EVERY} batches (max)",
                _ms(max(settles)),
                _ms(base[1]),
                f"{max(settles) / base[1]:.1f}x",
                "—",
                None,
                f"median {_ms(statistics.median(settles))}",
            )  # fmt: skip
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=594_000)
    parser.add_argument("--thresholds", type=int, nargs="+", default=[700, 20_000])
    parser.add_argument("--per-shard", type=int, default=entries._PER_SHARD, help="keys per shard of the task index")
    args = parser.parse_args()
    entries._PER_SHARD = args.per_shard
    rows = asyncio.run(run(args.tasks, args.thresholds))
    print(
        f"python -m bench.collector --tasks {args.tasks} --thresholds {' '.join(map(str, args.thresholds))}: "
        f"--per-shard {args.per_shard}: {BATCHES} batches of {KEYS} progress updates, settled every {SETTLE_EVERY}"
    )
    print(render_text(rows))


if __name__ == "__main__":
    main()
