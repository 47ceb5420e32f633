"""A snapshot updated from the previous one plus the touched tasks (the change feed's path) is the snapshot built
from scratch: the same order, the same entries, the same body, byte for byte, after any sequence of additions,
changes, moves in the order and removals."""

from __future__ import annotations

import random

import pytest

from service.domain.tracker import TaskView
from service.snapshot.entries import Sharded
from service.snapshot.order import GROUP_SIZE, cut, segments_of
from service.snapshot.snapshot import Snapshot, build_snapshot, task_key, update_snapshot
from service.source.scanner import ScanStats

pytestmark = pytest.mark.anyio


def view(rng: random.Random, task_id: str, start_ms: int | None = None) -> TaskView:
    files = rng.choice([0, 1, 3, 40, 2000])  # a few large ones: segments cut by size as well as by id
    file_list = b"[" + b",".join(b'{"path":"f%d","status":"pending","operate":"add"}' % i for i in range(files)) + b"]"
    return TaskView(
        task_id,
        rng.choice(["", "client-a"]),
        rng.choice(["processing", "pending"]),
        rng.randrange(101),
        rng.randrange(1_000, 1_100) * 1000 if start_ms is None else start_ms,  # many equal starts: ties by id
        2_000_000,
        None,
        files,
        file_list,
        rng.random() < 0.1,
        None,
    )


async def from_scratch(generation: int, tasks: dict[str, TaskView]) -> Snapshot:
    ordered = sorted(tasks.values(), key=task_key)
    return await build_snapshot(generation, ordered, ScanStats(), 0, None, "t")


@pytest.mark.parametrize("seed", range(4))
async def test_updates_equal_a_snapshot_built_from_scratch(seed: int) -> None:
    rng = random.Random(seed)
    tasks = {f"t{i:04d}": view(rng, f"t{i:04d}") for i in range(rng.choice([0, 5, 700]))}
    current = await from_scratch(1, tasks)
    serial = 10_000
    for generation in range(2, 120):
        touched: dict[str, TaskView | None] = {}
        for _ in range(rng.choice([1, 1, 2, 5, 40])):
            action = rng.random()
            if action < 0.3 or not tasks:  # a new task
                serial += 1
                task_id = f"n{serial}"
                tasks[task_id] = touched[task_id] = view(rng, task_id)
            elif action < 0.55:  # gone
                task_id = rng.choice(sorted(tasks))
                del tasks[task_id]
                touched[task_id] = None
            elif action < 0.7:  # moved in the order (its start changed)
                task_id = rng.choice(sorted(tasks))
                tasks[task_id] = touched[task_id] = view(rng, task_id)
            elif action < 0.9:  # changed in place
                task_id = rng.choice(sorted(tasks))
                tasks[task_id] = touched[task_id] = view(rng, task_id, tasks[task_id].start_ms)
            else:  # named, but unchanged (the same value written twice)
                task_id = rng.choice(sorted(tasks))
                touched[task_id] = tasks[task_id]
        current = await update_snapshot(generation, current, touched, 0, "t")
        expected = await from_scratch(generation, tasks)
        assert current.tasks == expected.tasks
        assert current.entries.keys() == expected.entries.keys()
        assert bytes(current.body) == bytes(expected.body)
        assert len(current.body) == len(bytes(current.body))  # the Content-Length, known before anything is joined
        # every segment, whether cut again or only spliced, is what cutting its tasks again makes, chunk for chunk
        assert all(
            [(s.items, s.length, s.chunks)] == [(c.items, c.length, c.chunks) for c in cut(list(s.items))]
            for s in segments_of(current.groups)
        )
        assert all(s.length == sum(map(len, s.chunks)) for s in segments_of(current.groups))
        assert all(g.length == sum(s.length for s in g.segments) for g in current.groups)
        assert current.group_keys == tuple(g.keys[0] for g in current.groups)
        assert current.groups_length == sum(g.length for g in current.groups)  # kept by the batches, not summed
        assert all(g.keys == tuple(task_key(s.items[0].view) for s in g.segments) for g in current.groups)


async def test_nothing_changed_keeps_the_body_and_its_etag() -> None:
    rng = random.Random(9)
    tasks = {f"t{i}": view(rng, f"t{i}") for i in range(50)}
    first = await from_scratch(1, tasks)
    again = await update_snapshot(2, first, {"t3": tasks["t3"], "absent": None}, 5, "t")
    assert again.generation == 2
    assert again.rendered is first.rendered
    assert again.etag == first.etag


async def test_a_batch_joins_nothing_and_a_send_joins_only_what_changed() -> None:
    rng = random.Random(3)
    tasks = {f"t{i:05d}": view(rng, f"t{i:05d}", 1_000_000 + i) for i in range(5000)}
    while any(task.file_count > 3 for task in tasks.values()):  # small tasks: a body past ONE_CHUNK_BYTES in many
        tasks = {i: t if t.file_count <= 3 else view(rng, i, t.start_ms) for i, t in tasks.items()}
    first = await from_scratch(1, tasks)
    assert len(first.body) > 1024 * 1024
    assert not any(segment.joined for segment in first.segments)  # nobody asked for the body yet
    assert bytes(first.body) == bytes((await from_scratch(1, tasks)).body)
    assert all(segment.joined for segment in first.segments)
    tasks["t01000"] = view(rng, "t01000", tasks["t01000"].start_ms)  # in place
    tasks["t02000"] = view(rng, "t02000", 1)  # moved to the end
    second = await update_snapshot(2, first, {"t01000": tasks["t01000"], "t02000": tasks["t02000"]}, 5, "t")
    new = [segment for segment in second.segments if not segment.joined]
    assert 2 <= len(new) <= 4  # the segments the two tasks left and entered: the batch joined none of them
    assert bytes(second.body) == bytes((await from_scratch(2, tasks)).body)
    assert all(segment.joined for segment in second.segments)


async def test_a_group_that_grows_is_split_and_one_that_empties_goes() -> None:
    rng = random.Random(5)
    tasks = {f"t{i:05d}": view(rng, f"t{i:05d}", 1_000_000 + i) for i in range(2000)}
    current = await from_scratch(1, tasks)
    groups_before = len(current.groups)
    touched: dict[str, TaskView | None] = {}
    for i in range(3000):  # all newer than every task held: they all enter the first segment
        task_id = f"n{i:05d}"
        tasks[task_id] = touched[task_id] = view(rng, task_id, 9_000_000 + i)
    current = await update_snapshot(2, current, touched, 0, "t")
    assert len(current.groups) > groups_before + 2
    assert all(len(group.segments) <= 2 * GROUP_SIZE for group in current.groups)
    oldest = sorted(tasks, key=lambda task_id: task_key(tasks[task_id]))[-1500:]  # the last groups, emptied
    current = await update_snapshot(3, current, dict.fromkeys(oldest), 0, "t")
    for task_id in oldest:
        del tasks[task_id]
    expected = await from_scratch(3, tasks)
    assert current.tasks == expected.tasks
    assert bytes(current.body) == bytes(expected.body)
    assert all(group.segments for group in current.groups)
    assert len(current.entries) == len(tasks) == current.task_count


@pytest.mark.parametrize("start", [0, 300])
def test_sharded_entries_are_the_dict_they_stand_for(start: int) -> None:
    rng = random.Random(3 + start)
    expected = {f"k{i}": i for i in range(start)}
    sharded: Sharded[int] = Sharded(expected.items(), len(expected))
    shard_counts = {len(sharded._shards)}
    for _ in range(400):
        changes: dict[str, int | None] = {}
        for _ in range(rng.choice([1, 5, 60])):
            key = f"k{rng.randrange(5000)}"
            changes[key] = None if rng.random() < 0.3 else rng.randrange(10**6)
        was = dict(expected)
        for key, value in changes.items():
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = value
        before = sharded
        sharded = sharded.with_changes(changes)
        shard_counts.add(len(sharded._shards))
        assert dict(sharded) == expected
        assert len(sharded) == len(expected)
        assert all((key in sharded) == (key in expected) for key in changes)
        assert all(sharded.get(key) == expected.get(key) for key in changes)
        assert all(sharded.get(key, -1) == expected.get(key, -1) for key in changes)
        assert dict(before) == was  # the mapping it was made from is unchanged
        # only the shards the changes fell in are new; the others are shared with the mapping before
        if len(before._shards) == len(sharded._shards):
            new = sum(a is not b for a, b in zip(before._shards, sharded._shards, strict=True))
            assert new == len({hash(key) & sharded._mask for key in changes})
    assert len(shard_counts) > 1  # grown from a few keys to thousands: spread over more shards on the way
