"""The simulator checked against producer-format.md, not against itself."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import random
import re
import statistics
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import fakeredis
import orjson
import pytest

from service.devtools.simulator import (
    KEY_PREFIX,
    SimTask,
    Simulator,
    WorkloadSummary,
    build_workload,
    encode_value,
    file_count,
)

PROCESSES = {"pending", "processing", "complete", "completed", "failed"}
RUNNING = {"pending", "processing"}
DONE = {"complete", "completed"}
FILE_STATUSES = {"pending", "processing", "completed", "unsupported"}
OPERATES = {"add", "modify", "delete", "rename"}
BASE_FIELDS = ["process", "totalProgress", "fileList"]
NEWER_FIELDS = [*BASE_FIELDS, "clientId", "startTime", "lastUpdateTime"]
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
NOW_MS = 1_795_827_723_456  # 2026-11-28T...: a fixed clock, the simulator never reads the real one


def check_value(raw: bytes, *, newer: bool = False) -> dict[str, Any]:
    """Assert `raw` is a value the producer could have written; return it decoded."""
    obj = json.loads(raw)
    assert isinstance(obj, dict)
    # Go's encoding/json output: compact, fields in struct order.
    assert json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() == raw
    assert list(obj) == (NEWER_FIELDS if newer else BASE_FIELDS)
    assert obj["process"] in PROCESSES  # never "running"
    progress = obj["totalProgress"]
    assert type(progress) is int and 0 <= progress <= 100
    files = obj["fileList"]
    if files is None:
        return obj
    assert isinstance(files, list) and files, "an empty fileList is written as null"
    for entry in files:
        assert list(entry) == ["path", "status", "operate"]
        assert isinstance(entry["path"], str) and entry["path"]
        assert entry["status"] in FILE_STATUSES
        assert entry["operate"] in OPERATES
    statuses = Counter(entry["status"] for entry in files)
    total = len(files)
    # processed / total * 100: entries completed/unsupported are processed; "processing" ones may be
    # in flight or deleted files the producer never closed.
    finished_entries = statuses["completed"] + statuses["unsupported"]
    assert finished_entries * 100 // total <= progress <= (finished_entries + statuses["processing"]) * 100 // total
    if obj["process"] in DONE:
        assert progress == 100
        assert statuses["pending"] == 0
        assert all(e["status"] != "processing" for e in files if e["operate"] != "delete")
    return obj


async def get_bytes(client: fakeredis.FakeAsyncRedis, key: str | bytes) -> bytes:
    raw = await client.get(key)
    assert isinstance(raw, bytes), f"{key!r} holds no string value"
    return raw


def run_to_end(sim: Simulator, task: SimTask, *, limit: int = 1000) -> list[bytes]:
    """Advance until nothing changes; return every value written along the way."""
    values = [task.value(NOW_MS)]
    for _ in range(limit):
        if not sim.advance(task):
            return values
        values.append(task.value(NOW_MS))
    raise AssertionError("task never stopped advancing")


def seeded_run(seed: int, n: int = 300) -> tuple[list[SimTask], list[list[bytes]]]:
    sim = Simulator(seed, large_files=60)
    tasks = [sim.new_task() for _ in range(n)]
    return tasks, [run_to_end(sim, task) for task in tasks]


def test_encode_value_is_go_compact_json() -> None:
    entry = {"path": "src/main.go", "status": "completed", "operate": "add"}
    assert encode_value("processing", 40, [entry]) == (
        b'{"process":"processing","totalProgress":40,"fileList":'
        b'[{"path":"src/main.go","status":"completed","operate":"add"}]}'
    )
    assert encode_value("pending", 0, []) == b'{"process":"pending","totalProgress":0,"fileList":null}'
    assert encode_value("failed", 0, None, clientId="c") == (
        b'{"process":"failed","totalProgress":0,"fileList":null,"clientId":"c"}'
    )


def test_keys_are_prefix_plus_uuid() -> None:
    sim = Simulator(1)
    tasks = [sim.new_task(files=3) for _ in range(50)]
    assert len({t.key() for t in tasks}) == 50
    for task in tasks:
        assert task.key().startswith("request:id:") and KEY_PREFIX == "request:id:"
        assert uuid.UUID(task.key().removeprefix("request:id:")).version == 4


def test_every_value_of_a_seeded_run_follows_the_format() -> None:
    tasks, histories = seeded_run(7)
    for history in histories:
        decoded = [check_value(raw) for raw in history]
        progress = [d["totalProgress"] for d in decoded]
        assert progress == sorted(progress), "progress never decreases"
        for before, after in zip(decoded, decoded[1:], strict=False):
            assert before != after, "advance() returned True without a change"
            if before["fileList"] is None:
                continue
            was = [e["status"] for e in before["fileList"]]
            now = [e["status"] for e in after["fileList"]]
            newly_done = sum(
                a in ("completed", "unsupported") and b not in ("completed", "unsupported")
                for a, b in zip(now, was, strict=True)
            )
            assert newly_done <= 10, "the producer writes an update every 10 files"
            assert all(not (b in ("completed", "unsupported") and a != b) for a, b in zip(now, was, strict=True))
    first = Counter(json.loads(h[0])["process"] for h in histories)
    assert first["processing"] > first["pending"] > 0, "tasks start processing, occasionally pending"
    last = Counter(json.loads(h[-1])["process"] for h in histories)
    assert last["complete"] > 50 and last["completed"] > 50, "both spellings of finished"
    assert last["failed"] > 5
    assert last["processing"] > 5, "stalled tasks"
    assert last.keys() <= {"complete", "completed", "failed", "processing"}
    assert any(json.loads(h[-1])["fileList"] is None for h in histories), "some uploads are empty"


def test_stalls_stay_processing_part_way() -> None:
    sim = Simulator(3)
    stalls = [sim.new_task(files=40, outcome="stall") for _ in range(20)]
    for task in stalls:
        values = run_to_end(sim, task)
        for _ in range(5):
            assert not sim.advance(task)
        final = check_value(task.value(NOW_MS))
        assert final["process"] == "processing" and final["totalProgress"] < 100
        assert task.value(NOW_MS) == values[-1]


def test_failures_can_happen_part_way_and_deleted_entries_stay_processing() -> None:
    tasks, histories = seeded_run(11)
    failed = [json.loads(h[-1]) for h in histories if json.loads(h[-1])["process"] == "failed"]
    assert any(f["totalProgress"] < 100 for f in failed)
    done = [json.loads(h[-1]) for h in histories if json.loads(h[-1])["process"] in DONE]
    assert any(e["operate"] == "delete" and e["status"] == "processing" for d in done for e in d["fileList"] or [])


def test_same_seed_same_bytes() -> None:
    def sequence(seed: int) -> list[bytes]:
        sim = Simulator(seed, newer_producer_fraction=0.5, large_files=30)
        out = []
        for _ in range(40):
            task = sim.new_task()
            if task.client_id is not None:
                task.start_ms = NOW_MS
            out += run_to_end(sim, task)
        return out

    assert sequence(5) == sequence(5)
    assert sequence(5) != sequence(6)


def test_file_count_distribution() -> None:
    rng = random.Random(5)
    sizes = [file_count(rng) for _ in range(20_000)]
    counts = Counter("empty" if s == 0 else "large" if s == 2000 else "normal" for s in sizes)
    assert 0.005 < counts["empty"] / len(sizes) < 0.015
    assert 0.005 < counts["large"] / len(sizes) < 0.015
    normal = [s for s in sizes if s not in (0, 2000)]
    assert min(normal) == 5 and max(normal) == 50
    assert 25 < statistics.mean(normal) < 30
    assert {file_count(random.Random(1), large_fraction=1.0, large_files=77)} == {77}


def test_value_sizes_span_hundreds_of_bytes_to_hundreds_of_kilobytes() -> None:
    sim = Simulator(2)
    small = sim.new_task(files=5).value(NOW_MS)
    large = sim.new_task(files=2000).value(NOW_MS)
    assert 300 < len(small) < 1000
    assert len(large) > 100_000


def test_write_sets_values_with_key_ttl() -> None:
    async def scenario() -> None:
        client = fakeredis.FakeAsyncRedis()
        sim = Simulator(4, key_ttl=900)
        tasks = [sim.new_task() for _ in range(1200)]  # more than one pipeline chunk
        await sim.write(client, tasks, NOW_MS)
        assert await client.dbsize() == 1200
        for task in tasks[::50]:
            assert await client.get(task.key()) == task.value(NOW_MS)
            assert 899 <= await client.ttl(task.key()) <= 900
        await client.aclose()

    asyncio.run(scenario())


def test_newer_producer_adds_client_and_times() -> None:
    async def scenario() -> list[dict[str, Any]]:
        client = fakeredis.FakeAsyncRedis()
        sim = Simulator(8, newer_producer_fraction=1.0)
        tasks = [sim.new_task(files=12) for _ in range(30)]
        await sim.write(client, tasks, NOW_MS - 5000)
        for task in tasks:
            sim.advance(task)
        await sim.write(client, tasks, NOW_MS)
        values = [check_value(await get_bytes(client, t.key()), newer=True) for t in tasks]
        await client.aclose()
        return values

    values = asyncio.run(scenario())
    now_text = datetime.fromtimestamp(NOW_MS / 1000, tz=UTC).isoformat(timespec="milliseconds")
    forms = Counter(type(v["startTime"]).__name__ for v in values)
    assert forms["str"] > 0 and forms["int"] > 0, "RFC 3339 strings and epoch milliseconds both occur"
    for v in values:
        assert isinstance(v["clientId"], str) and v["clientId"]
        if isinstance(v["startTime"], str):
            assert RFC3339_MS.match(v["startTime"]) and RFC3339_MS.match(v["lastUpdateTime"])
            assert v["lastUpdateTime"] == now_text.replace("+00:00", "Z")
            assert v["startTime"] < v["lastUpdateTime"]  # started at the first write, 5 s earlier
        else:
            assert v["lastUpdateTime"] == NOW_MS and v["startTime"] == NOW_MS - 5000
    assert len({v["clientId"] for v in values}) < len(values), "clients upload more than once"


def test_anomalies_are_written_with_the_right_types() -> None:
    async def scenario() -> None:
        client = fakeredis.FakeAsyncRedis()
        groups = await Simulator(9).write_anomalies(client)
        assert groups["empty_id"] == ["request:id:"]
        assert await client.get("request:id:") == b'{"process":"pending"}'
        assert len(groups["malformed"]) >= 3 and len(groups["wrong_type"]) >= 3
        for key in groups["malformed"]:
            assert await client.type(key) == b"string"
            raw = await get_bytes(client, key)
            try:
                decoded = json.loads(raw)
            except ValueError:
                continue
            assert not isinstance(decoded, dict), raw
        wrong: Counter[str] = Counter()
        for key in groups["wrong_type"]:
            obj = json.loads(await get_bytes(client, key))
            assert isinstance(obj, dict)
            if not isinstance(obj["process"], str):
                wrong["process"] += 1
            if type(obj["totalProgress"]) is not int:
                wrong["totalProgress"] += 1
            if obj["fileList"] is not None and not (
                isinstance(obj["fileList"], list) and all(isinstance(e, dict) for e in obj["fileList"])
            ):
                wrong["fileList"] += 1
        assert sum(wrong.values()) == len(groups["wrong_type"])
        assert wrong.keys() == {"process", "totalProgress", "fileList"}
        assert sorted([await client.type(k) for k in groups["not_string"]]) == [b"hash", b"list"]
        for key in groups["not_string"]:
            assert await client.ttl(key) > 0
        unrelated = groups["unrelated"]
        assert "codebase_embedder:lock:cleaner" in unrelated
        assert sum(k.startswith("othersvc:") for k in unrelated) >= 3
        assert not any(fnmatch.fnmatchcase(k, "request:id:*") for k in unrelated)
        for key in unrelated:
            assert await client.exists(key)
        matched = {k.decode() async for k in client.scan_iter(match="request:id:*")}
        expected = {k for kind, keys in groups.items() if kind != "unrelated" for k in keys}
        assert matched == expected
        assert await client.dbsize() == len(expected) + len(unrelated)
        await client.aclose()

    asyncio.run(scenario())


def well_typed(raw: object) -> dict[str, Any] | None:
    """`raw` decoded if it is a JSON object whose three fields have the producer's types, else None."""
    if not isinstance(raw, bytes):
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("process"), str):
        return None
    files = obj.get("fileList")
    if type(obj.get("totalProgress")) is not int:
        return None
    if files is not None and not (isinstance(files, list) and all(isinstance(e, dict) for e in files)):
        return None
    return obj


async def census(client: fakeredis.FakeAsyncRedis, *, large_files: int) -> dict[str, Any]:
    """Count what is really in Redis, classifying each key by the format rules."""
    running: Counter[str] = Counter()
    finished: Counter[str] = Counter()
    running_ids: set[str] = set()
    out: dict[str, Any] = {"tasks": 0, "malformed": 0, "unrelated": 0, "bytes": 0, "large": 0, "empty": 0}
    sizes: list[int] = []
    finished_pttl: list[int] = []
    async for raw_key in client.scan_iter(count=1000):
        key = raw_key.decode()
        if not fnmatch.fnmatchcase(key, "request:id:*"):
            out["unrelated"] += 1
            continue
        out["tasks"] += 1
        raw = await client.get(key) if await client.type(key) == b"string" else None
        obj = well_typed(raw)
        if not isinstance(raw, bytes) or obj is None:
            out["malformed"] += 1
            continue
        check_value(raw, newer="clientId" in obj)  # anything well typed must follow every rule
        sizes.append(len(raw))
        out["large"] += len(obj["fileList"] or []) == large_files
        out["empty"] += obj["fileList"] is None
        if obj["process"] in RUNNING:
            running[obj["process"]] += 1
            running_ids.add(key.removeprefix(KEY_PREFIX))
            out["bytes"] += len(raw)
        else:
            finished[obj["process"]] += 1
            finished_pttl.append(await client.pttl(key))
    out.update(running=dict(running), finished=dict(finished), running_ids=running_ids, sizes=sizes)
    out["finished_pttl"] = finished_pttl
    return out


def test_build_workload_counts_match_redis() -> None:
    async def scenario() -> tuple[WorkloadSummary, dict[str, Any], list[int]]:
        client = fakeredis.FakeAsyncRedis()
        summary = await build_workload(
            client,
            tasks=1500,
            unrelated=700,
            seed=3,
            malformed_fraction=0.03,
            large_fraction=0.02,
            large_files=150,
            key_ttl=600,
            newer_producer_fraction=0.2,
            now_ms=NOW_MS,
        )
        seen = await census(client, large_files=150)
        ttls = [await client.pttl(key) async for key in client.scan_iter(match="request:id:*", count=1000)]
        await client.aclose()
        return summary, seen, ttls

    summary, seen, ttls = asyncio.run(scenario())
    assert summary.task_keys == seen["tasks"] == 1500
    assert summary.unrelated == seen["unrelated"] == 700
    assert summary.malformed == seen["malformed"] == 45
    assert summary.running == seen["running"]
    assert summary.finished == seen["finished"]
    assert summary.running_ids == seen["running_ids"]
    assert summary.running_value_bytes == seen["bytes"]
    assert summary.large == seen["large"]
    assert summary.running_total == round((1500 - 45) * 0.6)
    assert {"pending", "processing"} <= summary.running.keys()
    assert {"complete", "completed", "failed"} <= summary.finished.keys()
    # size distribution: ~2% large, ~1% empty, the rest a few hundred bytes to a few KB
    assert 10 <= seen["large"] <= 50
    assert 3 <= seen["empty"] <= 35
    assert 1000 < statistics.median(seen["sizes"]) < 5000
    # every key expires within key_ttl; finished tasks were last written a while ago
    assert all(0 < ttl <= 600_000 for ttl in ttls)
    assert min(seen["finished_pttl"]) < 300_000


def test_build_workload_is_deterministic() -> None:
    async def dump(seed: int) -> dict[bytes, Any]:
        client = fakeredis.FakeAsyncRedis()
        await build_workload(client, tasks=200, unrelated=50, seed=seed, large_files=100, now_ms=NOW_MS)
        out: dict[bytes, Any] = {}
        async for key in client.scan_iter(count=1000):
            kind = await client.type(key)
            out[key] = await client.get(key) if kind == b"string" else kind
        await client.aclose()
        return out

    first = asyncio.run(dump(1))
    assert len(first) == 250
    assert first == asyncio.run(dump(1))
    assert first != asyncio.run(dump(2))


def test_ticks_keep_the_population_and_progress_only_grows_in_redis() -> None:
    async def scenario() -> None:
        client = fakeredis.FakeAsyncRedis()
        sim = Simulator(12, key_ttl=120, large_files=80)
        seen: dict[bytes, dict[str, Any]] = {}
        for i in range(40):
            now = NOW_MS + i * 2000
            changed = await sim.tick(client, tasks=15, now_ms=now)
            assert changed
            running = 0
            async for key in client.scan_iter(match="request:id:*", count=1000):
                obj = check_value(await get_bytes(client, key))
                running += obj["process"] in RUNNING
                before = seen.get(key)
                if before is not None:
                    assert obj["totalProgress"] >= before["totalProgress"]
                    if before["process"] not in RUNNING:
                        assert obj == before, "a finished task is never rewritten"
                seen[key] = obj
            assert running >= 15
        finished = Counter(o["process"] for o in seen.values() if o["process"] not in RUNNING)
        assert sum(finished.values()) > 20
        await client.aclose()

    asyncio.run(scenario())


def test_ticks_keep_about_the_tasks_asked_for_stalled_ones_included() -> None:
    """15 simulated minutes of the demo's settings: stalled tasks count until the simulator deletes their key,
    so the running list holds the number asked for, never that many plus every recent stall."""

    async def scenario() -> tuple[list[int], int]:
        client = fakeredis.FakeAsyncRedis()
        sim = Simulator(5, key_ttl=600, stall_hold=90)
        counts = []
        stalls = 0
        for i in range(600):
            await sim.tick(client, tasks=12, now_ms=NOW_MS + i * 1500)
            values = await client.mget(await client.keys("request:id:*"))
            counts.append(sum(orjson.loads(value)["process"] in RUNNING for value in values if value is not None))
            stalls = max(stalls, len(sim._stalled))
        await client.aclose()
        return counts, stalls

    counts, stalls = asyncio.run(scenario())
    assert stalls > 0, "the run had stalled tasks"
    assert max(counts) <= 12
    assert min(counts) >= 11  # a task that finishes leaves between ticks; the next tick starts another


def counting_clock(stop: asyncio.Event, ticks: int) -> Callable[[], int]:
    """A fake clock, one second per call, that sets `stop` on its `ticks`-th call (one call per tick)."""
    calls = 0

    def clock() -> int:
        nonlocal calls
        calls += 1
        if calls == ticks:
            stop.set()
        return NOW_MS + calls * 1000

    return clock


def test_run_keeps_tasks_alive_until_stopped() -> None:
    async def scenario() -> None:
        client = fakeredis.FakeAsyncRedis()
        stop = asyncio.Event()
        await Simulator(13).run(client, tasks=10, interval=0, stop=stop, clock=counting_clock(stop, 8))
        values = [check_value(await get_bytes(client, k)) async for k in client.scan_iter(match="request:id:*")]
        assert sum(v["process"] in RUNNING for v in values) >= 10
        assert len(values) > 10, "finished tasks were replaced by new ones"
        await client.aclose()

    asyncio.run(scenario())


def test_run_survives_redis_errors(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        server = fakeredis.FakeServer()
        server.connected = False
        client = fakeredis.FakeAsyncRedis(server=server)
        stop = asyncio.Event()
        await Simulator(13).run(client, tasks=10, interval=0, stop=stop, clock=counting_clock(stop, 3))
        await client.aclose()

    with caplog.at_level(logging.ERROR, logger="service.devtools.simulator"):
        asyncio.run(scenario())
    assert [r.message for r in caplog.records].count("simulator tick failed") == 3
