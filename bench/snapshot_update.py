"""python -m bench.snapshot_update [--tasks 594000] [--keys 1 10 120]: what a change feed's batch costs the snapshot
at a given size, in-process, against building the same snapshot from scratch in the same run.

Synthetic running tasks with small file lists (as the issue's million-key workload), ordered as the service orders
them; a batch changes the progress of `keys` random tasks (their place in the order stays) and `update_snapshot`
makes the next snapshot. The baseline is `build_snapshot` of the same tasks with no previous snapshot: what every
batch cost before batches updated the previous snapshot. The body is checked against a build from scratch at the
end, byte for byte. A second figure per batch size adds making the sends of the whole list after each batch (its
chunks iterated as `send_chunks` does, with no socket): a large body's segments are joined when first sent, so a
batch's own figure leaves out the joining of what it changed. What a real send costs, the ASGI sends and the
socket included, is bench.memory's whole-list GET figure. Timings are reported, never asserted."""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time

import msgspec

from bench.table import Row, render_text
from service.domain.tracker import TaskView
from service.snapshot.snapshot import Snapshot, build_snapshot, task_key, update_snapshot
from service.source.scanner import ScanStats

ROUNDS = 40
_FILES = b'[{"path":"src/a/b/module_%d.py","status":"pending","operate":"add"},{"path":"x.py","status":"done"}]'


def _tasks(count: int, rng: random.Random) -> dict[str, TaskView]:
    t0 = 1_795_000_000_000
    views = (
        TaskView(f"task-{i:07d}", f"c{i % 20}", "processing", 5, t0 + rng.randrange(10**7), t0, None, 2, _FILES % i)
        for i in range(count)
    )
    return {view.task_id: view for view in views}


async def _build(tasks: dict[str, TaskView], generation: int) -> tuple[Snapshot, float]:
    ordered = sorted(tasks.values(), key=task_key)
    started = time.perf_counter()
    snapshot = await build_snapshot(generation, ordered, ScanStats(), 0, None, "b")
    return snapshot, time.perf_counter() - started


async def run(count: int, batches: list[int]) -> tuple[list[Row], str]:
    rng = random.Random(1)
    tasks = _tasks(count, rng)
    ids = list(tasks)
    gc.disable()  # the service freezes what survives (service.snapshot.heap); a collection here is noise
    try:
        snapshot, built = await _build(tasks, 1)
        rows: list[Row] = []
        generation = 1
        for keys in batches:
            times, sent = [], []
            for _ in range(ROUNDS):
                touched: dict[str, TaskView | None] = {}
                for task_id in rng.sample(ids, keys):
                    view = tasks[task_id]
                    tasks[task_id] = touched[task_id] = msgspec.structs.replace(
                        view, total_progress=view.total_progress % 99 + 1, update_ms=view.update_ms + 1000
                    )
                generation += 1
                started = time.perf_counter()
                snapshot = await update_snapshot(generation, snapshot, touched, 0, "b")
                times.append(time.perf_counter() - started)
                for _chunk in snapshot.body.chunks:  # a whole-list send after every batch: the worst case
                    pass
                sent.append(time.perf_counter() - started)
            median, median_sent = statistics.median(times), statistics.median(sent)
            rows.append(
                Row(
                    f"{count:,}",
                    f"batch of {keys} key(s): update_snapshot, median of {ROUNDS}",
                    f"{median * 1000:,.2f} ms",
                    f"{built * 1000:,.0f} ms",
                    f"{built / median:,.0f}x less",
                    "—",
                    None,
                    f"p90 {sorted(times)[int(ROUNDS * 0.9)] * 1000:,.2f} ms; {median / keys * 1e6:,.0f} µs a key",
                )  # fmt: skip
            )
            rows.append(
                Row(
                    f"{count:,}",
                    f"the same, then the whole body's sends made (no socket), median of {ROUNDS}",
                    f"{median_sent * 1000:,.2f} ms",
                    f"{built * 1000:,.0f} ms",
                    f"{built / median_sent:,.0f}x less",
                    "—",
                    None,
                    f"p90 {sorted(sent)[int(ROUNDS * 0.9)] * 1000:,.2f} ms",
                )  # fmt: skip
            )
        expected, _ = await _build(tasks, generation)
        if bytes(expected.body) != bytes(snapshot.body):
            raise AssertionError("the updated body differs from the one built from scratch")
    finally:
        gc.enable()
    header = (
        f"python -m bench.snapshot_update --tasks {count} --keys {' '.join(map(str, batches))}: baseline = "
        f"build_snapshot of all {count:,} tasks from scratch ({len(bytes(snapshot.body)) / 2**20:,.0f} MiB body)"
    )
    return rows, header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=594_000)
    parser.add_argument("--keys", type=int, nargs="+", default=[1, 10, 120])
    args = parser.parse_args()
    rows, header = asyncio.run(run(args.tasks, args.keys))
    print(header)
    print(render_text(rows))


if __name__ == "__main__":
    main()
