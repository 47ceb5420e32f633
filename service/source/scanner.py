"""One full scan: SCAN pages -> a pool of workers fetching and decoding them -> running tasks + statistics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass

import msgspec

from service.domain.tasks import MalformedValue, Observation, StoredTask, decode_value, task_id_prefix
from service.settings import RunningTasksSettings
from service.source.failures import ScanTimeout
from service.source.keysource import KeySource
from service.source.redis_source import MISSING, WRONG_TYPE, KeyMeta

logger = logging.getLogger("service.source.scanner")


@dataclass(slots=True)
class ScanStats:
    started_ms: int = 0
    duration_ms: float = 0.0
    pages: int = 0  # SCAN replies
    fetches: int = 0  # batches of values the workers read
    keys_scanned: int = 0  # distinct keys SCAN returned
    duplicates: int = 0  # keys SCAN returned again within the same scan
    values_fetched: int = 0  # values present: read, or known unchanged without reading them (values_reused)
    values_reused: int = 0  # same expiry as in the last scan: not read again
    bytes_fetched: int = 0  # bytes of the values read
    decoded: int = 0  # values decoded (the others were unchanged since the last scan)
    expired: int = 0  # gone between SCAN and the value fetch
    malformed: int = 0  # bad JSON, wrong field types, another Redis type, an undecodable id
    wrong_type: int = 0  # of which: a key of another Redis type
    empty_id: int = 0  # `request:id:` itself
    matched: int = 0  # running tasks
    finished: int = 0  # well-formed tasks in another status

    def as_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class KeyReads:
    """What reading a set of named keys found (service.snapshot.follower's batches)."""

    stats: ScanStats
    running: list[Observation]  # running tasks, with their new values
    finished: list[Observation]  # tasks now in a finished status
    absent: list[str]  # task ids whose key is gone, of another type or holds no task: not running


_Decoded = StoredTask | str | None


# gc=False: numbers, a string or an untracked struct, never a cycle; and no larger than it must be, as a million
# keys are remembered (a struct is 24 bytes less than the tuple it replaced).
class _Memory(msgspec.Struct, frozen=True, gc=False):
    """What the scanner remembers of a value it decoded, keyed by its task id (the very string the task's
    decoded value, the tracker and the snapshot hold, not a copy): what deciding "unchanged" needs."""

    fingerprint: int  # the value's hash
    expire_at: int  # the key's expiry time when the value was read
    decoded: _Decoded  # the task if running, its status if finished, None if malformed


PageSink = Callable[[list[Observation]], None]
Pause = Callable[[], Awaitable[object]]
# What the producer hands a worker: keys whose values must be read, each with its task id and the service's clock
# when its page was scanned
_Batch = list[tuple[KeyMeta, str, int]]
# Bytes of values a worker decodes in one step of the event loop before it gives others a turn: decoding and
# checking the file lists is the dearest part of a scan, and a whole batch of large values held the loop too long.
_DECODE_BYTES_PER_STEP = 512 * 1024


def _counted(entry: _Decoded, stats: ScanStats) -> StoredTask | None:
    """Count what a value turned out to be; the task when it is a running one."""
    if entry is None:
        stats.malformed += 1
    elif isinstance(entry, str):
        stats.finished += 1
    else:
        stats.matched += 1
        return entry
    return None


async def _go_on() -> None:
    return None


def _task_id(key: bytes, plen: int) -> str | None:
    """The task id of a key under the prefix; None when it is not UTF-8 (malformed, never read)."""
    try:
        return key[plen:].decode()
    except UnicodeDecodeError:
        return None


def _canonical(task_id: str, known: _Memory | None) -> str:
    """The id string the memory holds for this task, when it holds a running one: a task's id stays one string
    for as long as it runs, however often its value is read again."""
    if known is not None and type(decoded := known.decoded) is StoredTask:
        return decoded.task_id
    return task_id


async def _release(memory: dict[str, _Memory]) -> None:
    # Dropping the memory of a large keyspace at once holds the event loop: drop it in slices.
    while memory:
        for _ in range(min(len(memory), 10_000)):
            memory.popitem()
        await asyncio.sleep(0)


class Scanner:
    """Runs full scans; remembers decoded values so that unchanged values are not decoded again."""

    def __init__(
        self,
        source: KeySource,
        settings: RunningTasksSettings,
        clock: Callable[[], int] | None = None,
        finished_sink: PageSink | None = None,
    ) -> None:
        """`finished_sink` gets each page's values in a finished status that a scan decoded (a value unchanged
        since the last complete scan is not reported again): how the tracker learns why a task departed."""
        self._source = source
        self._finished_sink = finished_sink
        self._settings = settings
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._prefix = task_id_prefix(settings.key_pattern).encode()
        self._running = frozenset(settings.running_statuses)
        self._decoded: dict[str, _Memory] = {}
        self._scans = 0
        self._deadline = 0.0  # event-loop time at which the current scan is over its budget
        self._pause: Pause = _go_on
        self._completed = False  # a scan has run to its end
        self.current: ScanStats | None = None
        # task ids whose value the last scan read and found different from what was remembered (or new; not on a
        # first scan): what a reconciliation scan finds that the change feed did not announce (`take_changed`).
        self.changed: set[str] = set()
        # While a scan runs: what `read_keys` learnt of the tasks it read since the scan began (None: the key is
        # gone). Newer than, or as new as, what the scan reads of them: the scan's memory takes these at its end.
        self._claims: dict[str, _Memory | None] | None = None

    def take_changed(self) -> set[bytes]:
        """The keys of `changed`, handed out once (a large keyspace's first reads are not kept for nothing)."""
        changed, self.changed = self.changed, set()
        prefix = self._prefix
        return {prefix + task_id.encode() for task_id in changed}

    @property
    def source(self) -> KeySource:
        return self._source

    @property
    def prefix(self) -> bytes:
        """The task keys' literal prefix: a key is this plus the task id."""
        return self._prefix

    async def scan(self, sink: PageSink, pause: Pause | None = None) -> ScanStats:
        """One full scan; `sink` gets each page's running tasks as soon as the page is decoded. `pause` is awaited
        before each page and each slice of values is taken in: what has priority over the scan (a change feed's
        batch) holds it there.

        Raises ScanTimeout past the budget, and the client's errors when Redis fails."""
        self._pause = pause or _go_on
        stats = ScanStats(started_ms=self._clock())
        self.current = stats  # readable while the scan runs, e.g. by a progress display
        started = time.perf_counter()
        decoded: dict[str, _Memory] = {}
        self.changed = set()
        self._claims = {}
        self._scans += 1
        # A producer rewrite (SET EX) always moves a key's expiry, so a value with the expiry it had in the last
        # scan is not read again. Every `full_read_every`-th scan reads them all anyway, so that a
        # writer that keeps the TTL (SET KEEPTTL, SETRANGE) is noticed within a bounded time.
        full_read = self._scans % self._settings.full_read_every == 0 or not self._decoded
        reuse = None if full_read else self._decoded
        self._deadline = asyncio.get_running_loop().time() + self._settings.max_scan_time / 1000
        budget = asyncio.timeout_at(self._deadline)
        try:
            async with budget:
                await self._run(stats, decoded, sink, reuse)
            if budget.expired():  # the deadline passed, but its cancellation was lost on the way (_over_budget)
                raise TimeoutError
        except BaseException as exc:
            # What the failed scan decoded is kept: the next scan reads again only what this one did not reach.
            # Otherwise a first scan that needs longer than max_scan_time (a large keyspace, a slow or busy
            # machine) would start from nothing at every attempt and never complete.
            self._decoded.update(decoded)
            self._settle_claims(self._decoded)
            if isinstance(exc, TimeoutError):
                raise ScanTimeout(f"scan exceeded max_scan_time ({self._settings.max_scan_time} ms)") from exc
            raise
        # Only a complete scan replaces the memory: keys that are gone are forgotten.
        self._settle_claims(decoded)
        self._completed = True
        previous, self._decoded = self._decoded, decoded
        await _release(previous)
        stats.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        return stats

    def _settle_claims(self, memory: dict[str, _Memory]) -> None:
        """What batches read during the scan stands over what the scan read; their keys are not the scan's finds."""
        claims, self._claims = self._claims or {}, None
        for task_id, known in claims.items():
            if known is None:
                memory.pop(task_id, None)
            else:
                memory[_canonical(task_id, known)] = known
        self.changed -= claims.keys()

    async def _run(
        self, stats: ScanStats, decoded: dict[str, _Memory], sink: PageSink, reuse: dict[str, _Memory] | None
    ) -> None:
        workers = self._settings.worker_count
        queue: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=workers * 2)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(self._worker(queue, stats, decoded, sink))
                await self._produce(queue, stats, decoded, sink, reuse)
                for _ in range(workers):
                    await queue.put(None)
        except BaseExceptionGroup as failed:  # a worker failed: the others are cancelled; report its error
            raise failed.exceptions[0] from None

    def _over_budget(self) -> None:
        """Raise TimeoutError once the scan is past its deadline; checked between pages and between fetches.

        asyncio.timeout cancels the scan at the deadline, but on Python 3.11 a cancellation that arrives while
        redis-py writes a command is lost: its send runs in asyncio.wait_for, which returns the send's result
        instead when the send finished in the same loop turn (CPython gh-86296, fixed in 3.12). In a scan that
        keeps the loop busy this happened nearly every time: a cold scan of the full workload given 1 s ran to
        its end, 5.9 s."""
        if asyncio.get_running_loop().time() >= self._deadline:
            raise TimeoutError

    async def _produce(
        self,
        queue: asyncio.Queue[_Batch | None],
        stats: ScanStats,
        decoded: dict[str, _Memory],
        sink: PageSink,
        reuse: dict[str, _Memory] | None,
    ) -> None:
        """SCAN; settle here every key whose value need not be read, and hand the others to the workers.

        A value with the expiry it had in the last scan is the one remembered: its memory is reused and its
        running task goes to `sink` with the page. Keys gone or of another type are counted. The values to read
        go to the workers in fetches of `scan_batch_size`, gathered across pages: after a refresh in which a few
        tasks changed here and there, they are read in a few full fetches, not in a small one per page. A page's
        work is done between two SCAN replies, while Redis walks the next page (`scan_pages` asks for it first):
        a warm refresh takes about as long as the chain of SCAN calls itself."""
        batch = self._settings.scan_batch_size
        prefix = self._prefix
        plen = len(prefix)
        seen: set[str | bytes] = set()
        wanted: _Batch = []
        async with aclosing(self._source.scan_pages(self._settings.key_pattern, batch)) as pages:
            async for page in pages:
                await self._pause()
                self._over_budget()
                stats.pages += 1
                seen_ms = self._clock()
                running: list[Observation] = []
                for meta in page.metas():
                    key, expire_at, _, pttl = meta  # unpacked: cheaper than a named tuple's attributes, per key
                    # seen by task id, the string the memory keeps (a key's bytes, if it has no id), so that what
                    # a scan holds until its end is not a second copy of every key
                    task_id = _task_id(key, plen)
                    memory = None
                    if task_id is not None and reuse is not None:
                        memory = reuse.get(task_id)
                        task_id = _canonical(task_id, memory)
                    name = key if task_id is None else task_id
                    if name in seen:
                        stats.duplicates += 1
                        continue
                    seen.add(name)
                    stats.keys_scanned += 1
                    if task_id is None:
                        stats.malformed += 1
                    elif not task_id:
                        stats.empty_id += 1
                    elif expire_at == MISSING:  # expired or deleted between SCAN and its lookups
                        stats.expired += 1
                    elif expire_at == WRONG_TYPE:
                        stats.wrong_type += 1
                        stats.malformed += 1
                    elif memory is None or expire_at < 0 or memory.expire_at != expire_at:
                        wanted.append((meta, task_id, seen_ms))
                        if len(wanted) >= batch:
                            await queue.put(wanted)
                            wanted = []
                    else:
                        decoded[task_id] = memory
                        stats.values_fetched += 1
                        stats.values_reused += 1
                        if (task := _counted(memory.decoded, stats)) is not None:
                            running.append(Observation(task, memory.fingerprint, pttl, seen_ms))
                if running:
                    sink(running)
        if wanted:
            await queue.put(wanted)

    async def _worker(
        self,
        queue: asyncio.Queue[_Batch | None],
        stats: ScanStats,
        decoded: dict[str, _Memory],
        sink: PageSink,
    ) -> None:
        while (batch := await queue.get()) is not None:
            values = await self._source.read([meta for meta, _, _ in batch])
            self._over_budget()
            stats.fetches += 1
            start = size = 0
            for end, value in enumerate(values, 1):  # slices of up to _DECODE_BYTES_PER_STEP (at least one value)
                size += len(value or b"")
                if size < _DECODE_BYTES_PER_STEP and end < len(values):
                    continue
                if start:
                    await asyncio.sleep(0)  # a turn for the loop between two slices
                await self._pause()
                finished: list[Observation] | None = None if self._finished_sink is None else []
                sink(list(self._decode_fetched(batch[start:end], values[start:end], stats, decoded, finished)))
                if finished and self._finished_sink is not None:
                    self._finished_sink(finished)
                start, size = end, 0

    def _decode_fetched(
        self,
        batch: _Batch,
        values: list[bytes | None],
        stats: ScanStats,
        decoded: dict[str, _Memory],
        finished: list[Observation] | None,
        again: bool = False,
    ) -> Iterable[Observation]:
        """The running tasks of `values`; values in a finished status go to `finished` when newly decoded (with
        `again`, known ones too)."""
        previous = self._decoded
        for (meta, task_id, seen_ms), value in zip(batch, values, strict=True):
            _, expire_at, _, pttl = meta
            if value is None:  # gone since SCAN looked at it, or replaced by a key of another type
                stats.expired += 1
                continue
            stats.values_fetched += 1
            stats.bytes_fetched += len(value)
            fingerprint = hash(value)
            known = previous.get(task_id)
            task_id = _canonical(task_id, known)
            if (known is None or known.fingerprint != fingerprint) and self._completed and self._claims is not None:
                # a scan's find (not a batch's between scans, nor before a first complete scan: nothing to measure)
                self.changed.add(task_id)
            if known is not None and known.fingerprint == fingerprint:
                entry = known.decoded
                # The same memory object when nothing moved: a full read then leaves no new objects for the
                # cyclic collector to walk after the scan.
                decoded[task_id] = known if known.expire_at == expire_at else _Memory(fingerprint, expire_at, entry)
                if isinstance(entry, str) and finished is not None and again:
                    # a batch's finished value the memory already knows (a scan that ended meanwhile read it, or it
                    # was written twice): reported all the same, so that a task still tracked departs with its
                    # outcome rather than as vanished; the tracker ignores tasks it no longer tracks
                    stored = self._decode(task_id, value)
                    if stored is not None:
                        finished.append(Observation(stored, fingerprint, pttl, seen_ms))
            else:
                stored = self._decode(task_id, value)
                stats.decoded += 1
                if stored is None or stored.process in self._running:
                    entry = stored
                else:
                    entry = stored.process
                    # a task that just finished always has a changed value, so it is reported from here, once
                    if finished is not None:
                        finished.append(Observation(stored, fingerprint, pttl, seen_ms))
                decoded[task_id] = _Memory(fingerprint, expire_at, entry)
            if (task := _counted(entry, stats)) is not None:
                yield Observation(task, fingerprint, pttl, seen_ms)

    async def read_keys(self, keys: list[bytes]) -> KeyReads:
        """Read and decode the values of `keys` (keys under the pattern that the change feed named) with the
        scan's own lookups and decoding, the values in the lookup's round trip up to `fetch_max_bytes` and in
        bounded MGETs past it, and remember them as a scan would: the next scan does not read them again. During a
        scan, what is read here stands over what the scan reads of the same keys (see `_settle_claims`)."""
        stats = ScanStats(started_ms=self._clock())
        page, read = await self._source.lookup(keys)
        seen_ms = self._clock()
        plen = len(self._prefix)
        memory = self._decoded
        absent: list[str] = []
        wanted: _Batch = []
        values: list[bytes | None] = []
        unread: list[int] = []  # places in `wanted` of values past the lookup's byte budget
        for meta, value in zip(page.metas(), read, strict=True):
            key, expire_at = meta.key, meta.expire_at
            stats.keys_scanned += 1
            task_id = _task_id(key, plen)
            if task_id is None:
                stats.malformed += 1
            elif expire_at in (MISSING, WRONG_TYPE) or not task_id:
                memory.pop(task_id, None)
                stats.expired += expire_at == MISSING
                stats.malformed += expire_at == WRONG_TYPE
                stats.empty_id += not task_id
                absent.append(task_id)
            else:
                if value is None:
                    unread.append(len(wanted))
                wanted.append((meta, task_id, seen_ms))
                values.append(value)
        stats.fetches += 1
        if unread:  # the rest, in MGETs bounded in bytes as a scan's
            for place, value in zip(unread, await self._source.read([wanted[i][0] for i in unread]), strict=True):
                values[place] = value
            stats.fetches += 1
        finished: list[Observation] = []
        running = list(self._decode_fetched(wanted, values, stats, memory, finished, again=True))
        settled = {obs.task.task_id for obs in running} | {obs.task.task_id for obs in finished}
        absent += [task_id for _, task_id, _ in wanted if task_id not in settled]  # gone since the lookup, or malformed
        if self._claims is not None:  # a scan runs: what was read here stands over what it reads
            claims = self._claims
            for key in page.keys:
                if (task_id := _task_id(key, plen)) is not None:
                    claims[task_id] = memory.get(task_id)
        stats.duration_ms = round(self._clock() - stats.started_ms, 3)
        return KeyReads(stats, running, finished, absent)

    def _decode(self, task_id: str, value: bytes) -> StoredTask | None:
        """The value's task, or None when it is malformed. Whatever one value makes the decoder raise stays with
        that value: counted as malformed, and the scan goes on."""
        try:
            return decode_value(task_id, value, self._running)
        except MalformedValue as exc:
            logger.debug("skipping malformed value of task %r: %s", task_id, exc)
        except Exception:
            # not a failure the decoder foresees (it raises MalformedValue for bad data): a defect, logged with its
            # traceback, but still contained to this value
            logger.exception("decoding the value of task %r failed; counted as malformed", task_id)
        return None
