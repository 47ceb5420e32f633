"""A deterministic stand-in for the embedder: writes task-status keys exactly as the Go producer does.

Everything this service knows about real producer data (see producer-format.md) is reproduced here,
quirks included, so tests, benchmarks and the demo all run against the same realistic keyspace.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, islice
from typing import TypeVar

import orjson
import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from service.domain.times import format_time
from service.domain.vocabulary import FILE_OPERATES, FINISHED_STATUSES, PRODUCER_RUNNING_STATUSES

# one server's client or a cluster's (the demo's --cluster, the tests and the bench of cluster mode)
Client = redis.Redis | RedisCluster
AnyPipeline = Pipeline | ClusterPipeline

logger = logging.getLogger("service.devtools.simulator")

_T = TypeVar("_T")

KEY_PREFIX = "request:id:"
RUNNING = PRODUCER_RUNNING_STATUSES
FINISHED = FINISHED_STATUSES
# How a simulated task ends: one of the producer's finished statuses, or it stops moving until its key expires.
OUTCOMES = (*FINISHED_STATUSES, "stall")
OPERATES = FILE_OPERATES

# The producer rewrites a task's value once per this many processed files.
UPDATE_EVERY = 10
# Commands per pipeline round trip: big enough to amortise latency, small enough to bound memory.
PIPELINE_CHUNK = 500

_OUTCOME_WEIGHTS = (0.42, 0.42, 0.08, 0.08)
_FINISHED_WEIGHTS = (0.45, 0.45, 0.10)
_OPERATE_WEIGHTS = (0.70, 0.20, 0.07, 0.03)
_DIRS = (
    "src",
    "cmd/server",
    "internal/api",
    "internal/store",
    "pkg/util",
    "web/components",
    "docs",
    "scripts",
    "test/e2e",
    "assets",
)
_STEMS = ("main", "handler", "service", "client", "config", "model", "index", "types", "helpers", "routes")
_SUPPORTED_EXTS = ("go", "py", "ts", "js", "java", "md", "yaml", "json", "c", "rs")
_UNSUPPORTED_EXTS = ("bin", "png", "jpg", "pdf", "zip")
_EXTS = _SUPPORTED_EXTS + _UNSUPPORTED_EXTS
_EXT_WEIGHTS = (10,) * len(_SUPPORTED_EXTS) + (2,) * len(_UNSUPPORTED_EXTS)
_UNSUPPORTED_SUFFIXES = tuple("." + ext for ext in _UNSUPPORTED_EXTS)
_COMBOS = [(f"{d}/{s}", e, o) for d in _DIRS for s in _STEMS for e in _EXTS for o in OPERATES]
_COMBO_CUM_WEIGHTS = list(
    accumulate(ew * ow for _d in _DIRS for _s in _STEMS for ew in _EXT_WEIGHTS for ow in _OPERATE_WEIGHTS)
)


def encode_value(process: str, progress: int, files: list[dict[str, str]] | None, **extra: object) -> bytes:
    """Encode a task value like Go's encoding/json: compact, producer field order, empty fileList as null."""
    value: dict[str, object] = {"process": process, "totalProgress": progress, "fileList": files or None}
    value.update(extra)
    return orjson.dumps(value)


def file_count(
    rng: random.Random,
    *,
    empty_fraction: float = 0.01,
    large_fraction: float = 0.01,
    large_files: int = 2000,
    low: int = 5,
    high: int = 50,
) -> int:
    """Draw a realistic upload size: a few empty uploads, a few huge ones, most between `low` and `high`."""
    r = rng.random()
    if r < empty_fraction:
        return 0
    if r < empty_fraction + large_fraction:
        return large_files
    return rng.randint(low, high)


def _task_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _file_list(rng: random.Random, n: int) -> list[dict[str, str]]:
    # One weighted draw per file over every (dir, stem, ext, operate) combination keeps 2,000-file uploads
    # cheap; the index keeps paths unique within a task.
    return [
        {"path": f"{prefix}{i}.{ext}", "status": "pending", "operate": op}
        for i, (prefix, ext, op) in enumerate(rng.choices(_COMBOS, cum_weights=_COMBO_CUM_WEIGHTS, k=n))
    ]


def _chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


@dataclass
class SimTask:
    """Mutable state of one simulated task."""

    task_id: str
    files: list[dict[str, str]]
    process: str = "processing"
    progress: int = 0
    outcome: str = "completed"
    client_id: str | None = None
    start_ms: int | None = None
    # Files the producer has finished with; progress is derived from it.
    done: int = 0
    # For "failed" and "stall" outcomes: the processed-file count at which the task stops.
    stop_at: int | None = None
    # Newer-producer tasks only: write startTime/lastUpdateTime as epoch milliseconds instead of RFC 3339.
    epoch_times: bool = False

    def key(self) -> str:
        """The Redis key the producer uses for this task."""
        return KEY_PREFIX + self.task_id

    def value(self, now_ms: int) -> bytes:
        """The JSON the producer would SET at `now_ms`."""
        if self.client_id is None:
            return encode_value(self.process, self.progress, self.files)
        start = self.start_ms if self.start_ms is not None else now_ms
        if self.epoch_times:
            return encode_value(
                self.process, self.progress, self.files, clientId=self.client_id, startTime=start, lastUpdateTime=now_ms
            )
        return encode_value(
            self.process,
            self.progress,
            self.files,
            clientId=self.client_id,
            startTime=format_time(start),
            lastUpdateTime=format_time(now_ms),
        )

    @property
    def running(self) -> bool:
        return self.process in RUNNING


@dataclass(frozen=True)
class WorkloadSummary:
    """Exact counts of what build_workload wrote."""

    task_keys: int
    running: dict[str, int]
    finished: dict[str, int]
    malformed: int
    unrelated: int
    running_value_bytes: int
    large: int
    running_ids: frozenset[str] = field(repr=False)

    @property
    def running_total(self) -> int:
        return sum(self.running.values())


class Simulator:
    """Seeded producer: creates tasks, advances them like the embedder does and writes them to Redis."""

    def __init__(
        self,
        seed: int = 0,
        *,
        key_ttl: int = 3600,
        newer_producer_fraction: float = 0.0,
        large_fraction: float = 0.01,
        large_files: int = 2000,
        files: int | None = None,
        file_range: tuple[int, int] = (5, 50),
        stall_hold: float | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        # Seconds a stalled task's key is kept before `tick` deletes it (the embedder's clean-up); None: it runs
        # down its TTL. Either way a stalled task counts towards `tasks` until its key is gone, so that the
        # running list holds about the number of tasks asked for, not that many plus every recent stall.
        self.stall_hold = stall_hold
        self.files = files  # every new task's file count; None: the realistic distribution
        self.file_range = file_range  # most tasks' file counts, in the realistic distribution
        self.key_ttl = key_ttl
        self.newer_producer_fraction = newer_producer_fraction
        self.large_fraction = large_fraction
        self.large_files = large_files
        # A handful of clients, each uploading many times, as in a real deployment.
        self._clients = [_task_id(self.rng) for _ in range(8)]
        self._active: list[SimTask] = []
        self._stalled: list[tuple[SimTask, int]] = []  # (task, when its key is gone, epoch ms)

    def new_task(self, *, files: int | None = None, outcome: str | None = None) -> SimTask:
        """A freshly uploaded task at 0 %, usually "processing", sometimes still "pending"."""
        rng = self.rng
        if outcome is None:
            outcome = rng.choices(OUTCOMES, weights=_OUTCOME_WEIGHTS)[0]
        elif outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}, expected one of {OUTCOMES}")
        if files is None:
            files = self.files
        if files is None:
            low, high = self.file_range
            files = file_count(
                rng, large_fraction=self.large_fraction, large_files=self.large_files, low=low, high=high
            )
        task = SimTask(task_id=_task_id(rng), files=_file_list(rng, files), outcome=outcome)
        if outcome == "stall":
            task.stop_at = rng.randrange(files) if files else 0
        elif outcome == "failed":
            # Failures happen anywhere, even before the first file (a restart rewrites in-flight tasks).
            task.stop_at = rng.randint(0, files)
        if rng.random() < self.newer_producer_fraction:
            task.client_id = rng.choice(self._clients)
            task.epoch_times = rng.random() < 0.5
        if rng.random() < 0.1:
            task.process = "pending"
        else:
            _mark_in_flight(task)
        return task

    def advance(self, task: SimTask) -> bool:
        """One producer update (the next UPDATE_EVERY files); returns True when the value changed."""
        if not task.running:
            return False
        if task.process == "pending":
            task.process = "processing"
            _mark_in_flight(task)
            return True
        total = len(task.files)
        stop = total if task.stop_at is None else min(task.stop_at, total)
        if task.done >= stop:
            if task.outcome == "stall":
                return False
            task.process = task.outcome
            return True
        end = min(task.done + UPDATE_EVERY, stop)
        for entry in task.files[task.done : end]:
            entry["status"] = self._processed_status(entry)
        task.done = end
        task.progress = end * 100 // total
        if end < total:
            _mark_in_flight(task)
        if end >= stop and task.outcome != "stall":
            task.process = task.outcome
        return True

    def _processed_status(self, entry: dict[str, str]) -> str:
        # Producer quirk: a deleted file's entry can stay "processing" for good.
        if entry["operate"] == "delete" and self.rng.random() < 0.5:
            return "processing"
        if entry["path"].endswith(_UNSUPPORTED_SUFFIXES):
            return "unsupported"
        return "completed"

    async def write(self, client: Client, tasks: Iterable[SimTask], now_ms: int) -> None:
        """SET every task's current value with EX key_ttl, pipelined in chunks."""
        for batch in _chunks(tasks, PIPELINE_CHUNK):
            async with client.pipeline(transaction=False) as pipe:
                for task in batch:
                    if task.client_id is not None and task.start_ms is None:
                        task.start_ms = now_ms
                    pipe.set(task.key(), task.value(now_ms), ex=self.key_ttl)
                await pipe.execute()

    async def write_anomalies(self, client: Client) -> dict[str, list[str]]:
        """Write every anomaly of producer-format.md and return the keys by kind.

        Kinds: "empty_id" (`request:id:` holding {"process":"pending"}), "malformed" (not a JSON object),
        "wrong_type" (a JSON object with mistyped fields), "not_string" (a hash and a list under the prefix),
        "unrelated" (other key families, including near misses of the prefix).
        """
        groups: dict[str, list[str]] = {"empty_id": [], "malformed": [], "wrong_type": [], "not_string": []}
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(KEY_PREFIX, b'{"process":"pending"}', ex=self.key_ttl)
            groups["empty_id"].append(KEY_PREFIX)
            for kind, value in _BAD_VALUES:
                key = KEY_PREFIX + _task_id(self.rng)
                pipe.set(key, value, ex=self.key_ttl)
                groups[kind].append(key)
            for kind in ("hash", "list"):
                key = KEY_PREFIX + _task_id(self.rng)
                _queue_not_string(pipe, key, kind, self.key_ttl)
                groups["not_string"].append(key)
            groups["unrelated"] = _queue_unrelated(pipe, self.rng, range(8))
            await pipe.execute()
        logger.debug("wrote anomalies: %s", {kind: len(keys) for kind, keys in groups.items()})
        return groups

    async def run(
        self,
        client: Client,
        *,
        tasks: int,
        interval: float,
        stop: asyncio.Event,
        clock: Callable[[], int],
    ) -> None:
        """Keep about `tasks` tasks moving until `stop` is set; `clock` returns epoch milliseconds."""
        while not stop.is_set():
            try:
                await self.tick(client, tasks=tasks, now_ms=clock())
            except Exception:
                # The demo must outlive a Redis hiccup: log it and try again next tick.
                logger.exception("simulator tick failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def tick(self, client: Client, *, tasks: int, now_ms: int) -> list[SimTask]:
        """One step of `run`: advance live tasks, replace finished ones and stalled ones whose key is gone, write
        what changed. About `tasks` keys are running at any time, stalled ones included."""
        warm_up = not self._active and not self._stalled
        changed: list[SimTask] = []
        alive: list[SimTask] = []
        for task in self._active:
            if self.advance(task):
                changed.append(task)
                if task.running:
                    alive.append(task)
            elif task.running:  # it stopped changing: stalled until its key is deleted or expires
                hold = self.key_ttl if self.stall_hold is None else self.stall_hold
                self._stalled.append((task, now_ms + int(hold * 1000)))
        gone = [task for task, gone_ms in self._stalled if gone_ms <= now_ms]
        self._stalled = [(task, gone_ms) for task, gone_ms in self._stalled if gone_ms > now_ms]
        while len(alive) + len(self._stalled) < tasks:
            task = self.new_task()
            if warm_up:
                # Start the first population at random points so it does not move in lockstep.
                for _ in range(self.rng.randrange(len(task.files) // UPDATE_EVERY + 1)):
                    if not self.advance(task) or not task.running:
                        break
            changed.append(task)
            if task.running:
                alive.append(task)
        self._active = alive
        await self.write(client, changed, now_ms)
        if gone and self.stall_hold is not None:
            await client.delete(*(task.key() for task in gone))
        return changed


def _mark_in_flight(task: SimTask) -> None:
    for entry in task.files[task.done : task.done + UPDATE_EVERY]:
        entry["status"] = "processing"


_BAD_VALUES: tuple[tuple[str, bytes], ...] = (
    ("malformed", b"\x80\x81 not json at all"),
    ("malformed", b""),
    ("malformed", b'{"process":"processing","totalProgress":4'),
    ("malformed", b'["processing",40]'),
    ("malformed", b'"processing"'),
    ("malformed", b"42"),
    ("malformed", b"null"),
    ("wrong_type", b'{"process":"processing","totalProgress":"40","fileList":null}'),
    ("wrong_type", b'{"process":"processing","totalProgress":40,"fileList":{"path":"a.go","status":"completed"}}'),
    ("wrong_type", b'{"process":1,"totalProgress":40,"fileList":null}'),
    ("wrong_type", b'{"process":"processing","totalProgress":40,"fileList":["src/main.go"]}'),
    ("wrong_type", b'{"process":"processing","totalProgress":null,"fileList":null}'),
)


def _queue_not_string(pipe: AnyPipeline, key: str, kind: str, ttl: int) -> None:
    if kind == "hash":
        pipe.hset(key, mapping={"process": "processing", "totalProgress": "40"})
    else:
        pipe.rpush(key, b"processing", b"40")
    pipe.expire(key, ttl)


def _queue_unrelated(pipe: AnyPipeline, rng: random.Random, indexes: Iterable[int]) -> list[str]:
    """Queue keys of other key families, one per index; the first three are fixed near misses and the lock."""
    keys: list[str] = []
    for i in indexes:
        if i == 0:
            key = "codebase_embedder:lock:cleaner"
            pipe.set(key, _task_id(rng), ex=60)
        elif i == 1:
            # Same text as a task value, but no trailing colon: must not match request:id:*.
            key = "request:id"
            pipe.set(key, b'{"process":"processing","totalProgress":1,"fileList":null}')
        elif i == 2:
            key = "request:idx:42"
            pipe.set(key, b"not a task")
        elif i % 4 == 0:
            key = f"othersvc:session:{i}"
            pipe.hset(key, mapping={"user": str(i), "ttl": "600"})
        elif i % 4 == 1:
            key = f"othersvc:queue:{i}"
            pipe.rpush(key, b"job-1", b"job-2")
        else:
            key = f"othersvc:cache:{i}"
            pipe.set(key, rng.randbytes(32), ex=3600)
        keys.append(key)
    return keys


async def build_workload(
    client: Client,
    *,
    tasks: int,
    unrelated: int,
    seed: int = 0,
    running_fraction: float = 0.6,
    malformed_fraction: float = 0.01,
    large_fraction: float = 0.01,
    large_files: int = 2000,
    file_range: tuple[int, int] = (5, 50),
    key_ttl: int = 3600,
    newer_producer_fraction: float = 0.0,
    now_ms: int,
) -> WorkloadSummary:
    """Write a static, deterministic keyspace: `tasks` keys under request:id:* plus `unrelated` other keys.

    Remaining TTLs follow the last write: running tasks were written seconds ago, stalled and finished
    ones up to most of key_ttl ago.
    """
    sim = Simulator(
        seed,
        key_ttl=key_ttl,
        newer_producer_fraction=newer_producer_fraction,
        large_fraction=large_fraction,
        large_files=large_files,
        file_range=file_range,
    )
    rng = sim.rng
    n_malformed = round(tasks * malformed_fraction)
    n_running = round((tasks - n_malformed) * running_fraction)
    kinds = ["malformed"] * n_malformed + ["running"] * n_running + ["finished"] * (tasks - n_malformed - n_running)
    rng.shuffle(kinds)
    running: Counter[str] = Counter()
    finished: Counter[str] = Counter()
    running_ids: set[str] = set()
    running_bytes = 0
    large = 0
    n_bad = 0
    ttl_ms = key_ttl * 1000
    for batch in _chunks(kinds, PIPELINE_CHUNK):
        async with client.pipeline(transaction=False) as pipe:
            for kind in batch:
                if kind == "malformed":
                    # Cycle through every kind of bad value, then a hash and a list.
                    key = KEY_PREFIX + _task_id(rng)
                    j = n_bad % (len(_BAD_VALUES) + 2)
                    n_bad += 1
                    if j < len(_BAD_VALUES):
                        pipe.set(key, _BAD_VALUES[j][1], ex=key_ttl)
                    else:
                        _queue_not_string(pipe, key, "hash" if j == len(_BAD_VALUES) else "list", key_ttl)
                    continue
                if kind == "running":
                    task = sim.new_task(outcome=rng.choices(("completed", "stall"), weights=(0.9, 0.1))[0])
                    # Any number of updates short of the last one; a stall stops by itself.
                    for _ in range(rng.randrange(-(-len(task.files) // UPDATE_EVERY) or 1)):
                        sim.advance(task)
                    age_ms = rng.randrange(ttl_ms // 2) if task.outcome == "stall" else rng.randrange(10_000)
                else:
                    task = sim.new_task(outcome=rng.choices(FINISHED, weights=_FINISHED_WEIGHTS)[0])
                    while sim.advance(task):
                        pass
                    age_ms = rng.randrange(ttl_ms * 9 // 10)
                large += len(task.files) == large_files
                written_ms = now_ms - age_ms
                if task.client_id is not None:
                    task.start_ms = written_ms - rng.randrange(1, 600_000)
                value = task.value(written_ms)
                pipe.set(task.key(), value, px=ttl_ms - age_ms)
                if task.running:
                    running[task.process] += 1
                    running_ids.add(task.task_id)
                    running_bytes += len(value)
                else:
                    finished[task.process] += 1
            await pipe.execute()
    for indexes in _chunks(range(unrelated), PIPELINE_CHUNK):
        async with client.pipeline(transaction=False) as pipe:
            _queue_unrelated(pipe, rng, indexes)
            await pipe.execute()
    summary = WorkloadSummary(
        task_keys=tasks,
        running=dict(running),
        finished=dict(finished),
        malformed=n_malformed,
        unrelated=unrelated,
        running_value_bytes=running_bytes,
        large=large,
        running_ids=frozenset(running_ids),
    )
    logger.info(
        "workload written: %d task keys (%d running, %d malformed), %d unrelated",
        summary.task_keys,
        summary.running_total,
        summary.malformed,
        summary.unrelated,
    )
    return summary
