"""The running tasks in serving order, as the body is cut: segments of tasks, in groups, so that a change feed's
batch finds, re-cuts and re-links only what it touched (a two-level tree: the groups, then their segments)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import attrgetter, itemgetter
from typing import NamedTuple

import msgspec

from service.domain.tracker import TaskView
from service.snapshot.body import CHUNK_BYTES, Segment, joiner


# gc=False: an entry holds a struct and bytes, never a cycle. The collector does not track it, nor the index's
# shards that hold only entries: a batch's copies of the shards it touched are never walked (docs/performance.md).
class Entry(msgspec.Struct, frozen=True, gc=False):
    """A task with its JSON head, rendered when the task's view changed; the same entry while it does not."""

    view: TaskView
    head: bytes


# Where a task stands in the serving order (newest start first, ties by task id).
TaskKey = tuple[int, str]

SEPARATOR, TASK_END = b",", b"}"
# One task in SEGMENT_MASK + 1 ends a segment, by its id: the cuts stay put while other tasks change, come and go,
# and a changed task costs a copy of its segment (on average twice that many tasks: the segment holding a given
# task is, by size bias, a long one), not of the body.
SEGMENT_MASK = 7
# Segments per group: a batch copies the group lists of the groups it touched and the list of groups.
GROUP_SIZE = 32


class Relocated(NamedTuple):
    """The groups after a batch, their first tasks, and how many bytes their items gained (or lost)."""

    groups: tuple[Group, ...]
    keys: tuple[TaskKey, ...]
    length_change: int


class Group:
    """Consecutive segments, with what a body and a lookup need of them, and their chunks in one tuple, made when
    first sent and kept (a send walks some 2,300 of these tuples at a million tasks, not 74,000 segments)."""

    __slots__ = ("_chunks", "keys", "length", "segments")

    def __init__(self, segments: tuple[Segment, ...], keys: tuple[TaskKey, ...], length: int) -> None:
        self.segments = segments
        self.keys = keys  # each segment's first task
        self.length = length  # their bytes
        self._chunks: tuple[bytes, ...] | None = None

    @property
    def chunks(self) -> tuple[bytes, ...]:
        """The segments' chunks, in order (two threads may both make them: the same tuple, and either is kept)."""
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = tuple(itertools.chain.from_iterable(map(_CHUNKS, self.segments)))
        return chunks


# C-level accessors for the per-batch walks (a Python call per item or group costs more than the walk itself)
_FIRST = itemgetter(0)
_KEYS, _LENGTH, _CHUNKS = attrgetter("keys"), attrgetter("length"), attrgetter("chunks")


def task_key(view: TaskView) -> TaskKey:
    return (-view.start_ms, view.task_id)


def entry_key(entry: Entry) -> TaskKey:
    return (-entry.view.start_ms, entry.view.task_id)


def parts(entry: Entry) -> tuple[bytes, bytes, bytes]:
    # the file list is held once, in the view; bodies are joined from these parts
    return entry.head, entry.view.file_list, TASK_END


def ends_segment(entry: Entry) -> bool:
    return hash(entry.view.task_id) & SEGMENT_MASK == 0


# A segment of tasks joined into its chunks (when first sent), as `body.cut_segments` joins them with `parts`
join_tasks = joiner(parts, SEPARATOR)


def group(segments: Sequence[Segment]) -> tuple[Group, ...]:
    """`segments` in groups of GROUP_SIZE."""
    keys = [entry_key(segment.items[0]) for segment in segments]
    return tuple(
        _group(segments[start : start + GROUP_SIZE], keys[start : start + GROUP_SIZE])
        for start in range(0, len(segments), GROUP_SIZE)
    )


def chunk_runs(groups: Iterable[Group]) -> Iterator[tuple[bytes, ...]]:
    """Each group's chunks, in order: a body's (`body.RenderedBody.of_runs`)."""
    return map(_CHUNKS, groups)


def segments_of(groups: Iterable[Group]) -> Iterator[Segment]:
    return itertools.chain.from_iterable(map(attrgetter("segments"), groups))


def group_keys(groups: Iterable[Group]) -> tuple[TaskKey, ...]:
    return tuple(map(_FIRST, map(_KEYS, groups)))


def relocate(
    groups: tuple[Group, ...],
    keys: tuple[TaskKey, ...],
    known: Mapping[str, Entry],
    changed: Mapping[str, Entry | None],
) -> Relocated:
    """`groups` (with `keys`, their first tasks) after the tasks of `changed` left the places `known` gives them and
    took their new ones (None: gone). Only the segments they leave or enter are cut again, and only their groups
    are made again; every other group is taken as it is, and nothing is walked per group (the groups and their keys
    are copied as slices)."""
    # (group, segment) -> what leaves it (each task's old place) and what enters it (its new one); a task whose
    # place in the order did not change (a progress update: the common case) is only replaced where it is
    leaving: dict[tuple[int, int], list[TaskKey]] = {}
    entering: dict[tuple[int, int], list[Entry]] = {}
    replacing: dict[tuple[int, int], list[tuple[TaskKey, Entry]]] = {}
    for task_id, entry in changed.items():
        old = known.get(task_id)
        key = None if old is None else task_key(old.view)
        if entry is not None and key is not None and task_key(entry.view) == key:
            replacing.setdefault(_place(groups, keys, key), []).append((key, entry))
            continue
        if key is not None:
            leaving.setdefault(_place(groups, keys, key), []).append(key)
        if entry is not None:
            entering.setdefault(_place(groups, keys, task_key(entry.view)), []).append(entry)
    touched: dict[int, list[int]] = {}
    for where in sorted(leaving.keys() | entering.keys() | replacing.keys()):
        touched.setdefault(where[0], []).append(where[1])
    made: list[Group] = []
    made_keys: list[TaskKey] = []
    change = done = 0
    for index, numbers in touched.items():
        made += groups[done:index]
        made_keys += keys[done:index]
        group_ = groups[index]
        change -= group_.length
        remade = len(made)
        segments, firsts = list(group_.segments), list(group_.keys)
        spliced: list[tuple[int, Segment]] = []  # (number, its segment before) of those only spliced
        for number in reversed(numbers):  # from the end: the places before stay valid
            where = (index, number)
            replaced = replacing.get(where, ())
            if where not in leaving and where not in entering:
                segment = _splice(segments[number], replaced)
                if segment is not None:
                    spliced.append((number, segments[number]))
                    segments[number] = segment
                    continue
            items: list[Entry] = list(segments[number].items)
            for key, entry in replaced:
                items[bisect.bisect_left(items, key, key=entry_key)] = entry
            for key in leaving.get(where, ()):
                del items[bisect.bisect_left(items, key, key=entry_key)]
            for entry in entering.get(where, ()):
                bisect.insort(items, entry, key=entry_key)
            new = cut(items)
            segments[number : number + 1] = new
            firsts[number : number + 1] = [entry_key(segment.items[0]) for segment in new]
        if len(spliced) == len(numbers):  # the same segments, a few of them with other bytes
            made.append(_respliced(group_, segments, spliced))
        else:
            step = GROUP_SIZE if len(segments) > 2 * GROUP_SIZE else len(segments) or 1
            for start in range(0, len(segments), step):
                made.append(_group(segments[start : start + step], firsts[start : start + step]))
        for remade_group in made[remade:]:
            change += remade_group.length
            made_keys.append(remade_group.keys[0])
        done = index + 1
    made += groups[done:]
    made_keys += keys[done:]
    return Relocated(tuple(made), tuple(made_keys), change)


def _splice(segment: Segment, replaced: Sequence[tuple[TaskKey, Entry]]) -> Segment | None:
    """`segment` with the tasks of `replaced` (each at the place of its `key`, which it keeps) swapped in: the same
    cuts, a new segment to be joined when first sent. None where `cut` might cut these items otherwise (a segment
    that reaches CHUNK_BYTES, before or after)."""
    items: list[Entry] = list(segment.items)
    # the tasks' bytes without their separators: under CHUNK_BYTES before and after, no cut was made by size, nor
    # would be (cuts by id stay where they are)
    size = before = segment.length - len(SEPARATOR) * len(items)
    for key, entry in replaced:
        place = bisect.bisect_left(items, key, key=entry_key)
        size += _length(entry) - _length(items[place])
        items[place] = entry
    if max(before, size) >= CHUNK_BYTES:
        return None
    return Segment(tuple(items), segment.length + size - before, join_tasks)


def _length(entry: Entry) -> int:
    """An entry's bytes in a chunk without its separator: head, file list, TASK_END."""
    return len(entry.head) + len(entry.view.file_list) + len(TASK_END)


def _respliced(group: Group, segments: list[Segment], spliced: list[tuple[int, Segment]]) -> Group:
    """`group` with the segments numbered in `spliced` (each before) replaced from `segments`: the same cuts."""
    length = group.length + sum(segments[number].length - before.length for number, before in spliced)
    return Group(tuple(segments), group.keys, length)


def cut(items: list[Entry]) -> list[Segment]:
    """`items` (in order) as segments, cut as `body.cut_segments` cuts them with `parts` and `ends_segment`: after
    each task `ends_segment` names or at CHUNK_BYTES. For the few segments a batch touches, at a fraction of the
    generic cut's cost per task; nothing is joined."""
    segments: list[Segment] = []
    start = size = 0
    step = len(SEPARATOR)
    for index, entry in enumerate(items):
        size += _length(entry)
        if size >= CHUNK_BYTES or hash(entry.view.task_id) & SEGMENT_MASK == 0:
            segments.append(Segment(tuple(items[start : index + 1]), size + step * (index + 1 - start), join_tasks))
            start, size = index + 1, 0
    if start < len(items):
        segments.append(Segment(tuple(items[start:]), size + step * (len(items) - start), join_tasks))
    return segments


def _place(groups: tuple[Group, ...], keys: tuple[TaskKey, ...], key: TaskKey) -> tuple[int, int]:
    """The group and segment where a task of `key` is, or would go (before the first task: the first segment)."""
    index = max(bisect.bisect_right(keys, key) - 1, 0)
    return index, max(bisect.bisect_right(groups[index].keys, key) - 1, 0)


def _group(segments: Sequence[Segment], keys: Sequence[TaskKey]) -> Group:
    return Group(tuple(segments), tuple(keys), sum(map(_LENGTH, segments)))
