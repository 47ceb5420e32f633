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
from service.snapshot.body import CHUNK_BYTES, OWN_CHUNK_BYTES, Segment


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


class Group(NamedTuple):
    """Consecutive segments, with what a body and a lookup need of them."""

    segments: tuple[Segment, ...]
    keys: tuple[TaskKey, ...]  # each segment's first task
    chunks: tuple[bytes, ...]  # the segments' chunks, in order
    length: int  # their bytes


# C-level accessors for the per-batch walks (a Python call per item or group costs more than the walk itself)
_FIRST = itemgetter(0)
_HEAD, _VIEW = attrgetter("head"), attrgetter("view")
_KEYS, _FILE_LIST = attrgetter("keys"), attrgetter("file_list")


def task_key(view: TaskView) -> TaskKey:
    return (-view.start_ms, view.task_id)


def entry_key(entry: Entry) -> TaskKey:
    return (-entry.view.start_ms, entry.view.task_id)


def parts(entry: Entry) -> tuple[bytes, bytes, bytes]:
    # the file list is held once, in the view; bodies are joined from these parts
    return entry.head, entry.view.file_list, TASK_END


def ends_segment(entry: Entry) -> bool:
    return hash(entry.view.task_id) & SEGMENT_MASK == 0


def group(segments: Sequence[Segment]) -> tuple[Group, ...]:
    """`segments` in groups of GROUP_SIZE."""
    keys = [entry_key(segment.items[0]) for segment in segments]  # type: ignore[arg-type]
    return tuple(
        _group(segments[start : start + GROUP_SIZE], keys[start : start + GROUP_SIZE])
        for start in range(0, len(segments), GROUP_SIZE)
    )


def segments_of(groups: Iterable[Group]) -> Iterator[Segment]:
    return itertools.chain.from_iterable(map(attrgetter("segments"), groups))


def group_keys(groups: Iterable[Group]) -> tuple[TaskKey, ...]:
    return tuple(map(_FIRST, map(_KEYS, groups)))


def relocate(
    groups: tuple[Group, ...],
    keys: tuple[TaskKey, ...],
    known: Mapping[str, Entry],
    changed: Mapping[str, Entry | None],
) -> tuple[Group, ...]:
    """`groups` (with `keys`, their first tasks) after the tasks of `changed` left the places `known` gives them and
    took their new ones (None: gone). Only the segments they leave or enter are cut again, and only their groups
    are made again; every other group is taken as it is."""
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
    done = 0
    for index, numbers in touched.items():
        made += groups[done:index]
        group_ = groups[index]
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
            items: list[Entry] = list(segments[number].items)  # type: ignore[arg-type]
            for key, entry in replaced:
                items[bisect.bisect_left(items, key, key=entry_key)] = entry
            for key in leaving.get(where, ()):
                del items[bisect.bisect_left(items, key, key=entry_key)]
            for entry in entering.get(where, ()):
                bisect.insort(items, entry, key=entry_key)
            new = cut(items)
            segments[number : number + 1] = new
            firsts[number : number + 1] = [entry_key(segment.items[0]) for segment in new]  # type: ignore[arg-type]
        if len(spliced) == len(numbers):  # the same segments, a few of them with other bytes
            made.append(_respliced(group_, segments, spliced))
        else:
            step = GROUP_SIZE if len(segments) > 2 * GROUP_SIZE else len(segments) or 1
            for start in range(0, len(segments), step):
                made.append(_group(segments[start : start + step], firsts[start : start + step]))
        done = index + 1
    made += groups[done:]
    return tuple(made)


def _splice(segment: Segment, replaced: Sequence[tuple[TaskKey, Entry]]) -> Segment | None:
    """`segment` with the tasks of `replaced` (each at the place of its `key`, which it keeps) rendered anew in its
    one chunk: a copy of the chunk with a few tasks' bytes swapped, instead of rendering all of its tasks again.
    None where `cut` might cut these items otherwise (a large task, a segment near CHUNK_BYTES)."""
    if len(segment.chunks) != 1:  # a large task is a chunk of its own
        return None
    chunk = segment.chunks[0]
    items: list[Entry] = list(segment.items)  # type: ignore[arg-type]
    # the tasks' bytes without their separators: under CHUNK_BYTES before and after, no cut was made by size, nor
    # would be (cuts by id stay where they are)
    size = before = len(chunk) - len(items)
    places = sorted((bisect.bisect_left(items, key, key=entry_key), entry) for key, entry in replaced)
    pieces: list[bytes] = []
    copied = position = scanned = 0  # chunk bytes copied; where items[scanned] starts in the chunk
    for place, entry in places:
        view, head = entry.view, entry.head
        if len(view.file_list) >= OWN_CHUNK_BYTES:
            return None
        between = items[scanned:place]
        position += (
            sum(map(len, map(_HEAD, between))) + sum(map(len, map(_FILE_LIST, map(_VIEW, between)))) + 2 * len(between)
        )
        pieces += (chunk[copied:position], SEPARATOR, head, view.file_list, TASK_END)
        size += _length(entry) - _length(items[place])
        position = copied = position + _length(items[place])
        items[place] = entry
        scanned = place + 1
    if max(before, size) >= CHUNK_BYTES:
        return None
    pieces.append(chunk[copied:])
    return Segment(tuple(items), (b"".join(pieces),))


def _length(entry: Entry) -> int:
    """An entry's bytes in a chunk: SEPARATOR, head, file list, TASK_END."""
    return len(entry.head) + len(entry.view.file_list) + 2


def _respliced(group: Group, segments: list[Segment], spliced: list[tuple[int, Segment]]) -> Group:
    """`group` with the segments numbered in `spliced` (each with its one chunk, before and after) replaced from
    `segments`: the chunks tuple copied with those swapped, not chained again."""
    chunks = list(group.chunks)
    length = group.length
    one_each = len(chunks) == len(group.segments)
    for number, before in spliced:
        position = number if one_each else sum(len(segment.chunks) for segment in group.segments[:number])
        chunk = segments[number].chunks[0]
        chunks[position] = chunk
        length += len(chunk) - len(before.chunks[0])
    return Group(tuple(segments), group.keys, tuple(chunks), length)


def cut(items: list[Entry]) -> list[Segment]:
    """`items` (in order) as segments, cut as `body.cut_segments` cuts them with `parts` and `ends_segment`: after
    each task `ends_segment` names or at CHUNK_BYTES, a file list of OWN_CHUNK_BYTES or more a chunk of its own.
    For the few segments a batch touches, at a fraction of the generic cut's cost per task."""
    segments: list[Segment] = []
    chunks: list[bytes] = []
    pending: list[bytes] = []
    start = size = 0
    for index, entry in enumerate(items):
        view, head = entry.view, entry.head
        file_list = view.file_list
        if len(file_list) >= OWN_CHUNK_BYTES:
            pending += (SEPARATOR, head)
            chunks += (b"".join(pending), file_list)
            pending = [TASK_END]
        else:
            pending += (SEPARATOR, head, file_list, TASK_END)
        size += len(head) + len(file_list) + len(TASK_END)
        if size >= CHUNK_BYTES or hash(view.task_id) & SEGMENT_MASK == 0:
            chunks.append(b"".join(pending))
            segments.append(Segment(tuple(items[start : index + 1]), tuple(chunk for chunk in chunks if chunk)))
            chunks, pending, start, size = [], [], index + 1, 0
    if start < len(items):
        chunks.append(b"".join(pending))
        segments.append(Segment(tuple(items[start:]), tuple(chunk for chunk in chunks if chunk)))
    return segments


def _place(groups: tuple[Group, ...], keys: tuple[TaskKey, ...], key: TaskKey) -> tuple[int, int]:
    """The group and segment where a task of `key` is, or would go (before the first task: the first segment)."""
    index = max(bisect.bisect_right(keys, key) - 1, 0)
    return index, max(bisect.bisect_right(groups[index].keys, key) - 1, 0)


def _group(segments: Sequence[Segment], keys: Sequence[TaskKey]) -> Group:
    chunks = tuple(itertools.chain.from_iterable(map(attrgetter("chunks"), segments)))
    return Group(tuple(segments), tuple(keys), chunks, sum(map(len, chunks)))
