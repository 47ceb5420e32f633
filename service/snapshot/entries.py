"""A read-only mapping that the next snapshot makes from the previous one plus a few changes, at the cost of the
changes: the keys are spread over small shards by hash, and a change copies only the shards it touches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from typing import Final, Generic, TypeVar, overload

V = TypeVar("V")
T = TypeVar("T")
_MISSING: Final = object()

# Keys per shard, about: a batch copies the shards its changes fall in, and the tuple of the shards. The index this
# replaced, one dict with a layer of changes, was folded back into a new dict every couple of seconds at a million
# tasks: that copy, and the cyclic collector's walks of the new dict, stalled the batch that did it for tens of
# milliseconds (docs/performance.md, issue 17).
_PER_SHARD = 64
_MAX_SHARDS = 1 << 16


def _shard_count(length: int) -> int:
    count = 1
    while count * _PER_SHARD < length and count < _MAX_SHARDS:
        count *= 2
    return count


class Sharded(Mapping[str, V], Generic[V]):
    """`key -> value` in shards (dicts) chosen by the key's hash; never changed after construction.
    `with_changes` copies the shards its changes fall in and shares the others: its cost follows the changes, not
    the size of the mapping. The shards are redistributed only when the mapping has grown past four times what
    they were made for (a geometric growth, paid rarely)."""

    __slots__ = ("_len", "_mask", "_shards")

    def __init__(self, items: Iterable[tuple[str, V]] = (), length_hint: int = 0) -> None:
        """The mapping of `items`, in shards for about `length_hint` keys."""
        builder: ShardedBuilder[V] = ShardedBuilder(length_hint)
        for key, value in items:
            builder.add(key, value)
        self._shards, self._mask, self._len = builder.shards, builder.mask, builder.length

    @classmethod
    def _of(cls, shards: tuple[dict[str, V], ...], length: int) -> Sharded[V]:
        made = cls.__new__(cls)
        made._shards, made._mask, made._len = shards, len(shards) - 1, length
        return made

    def with_changes(self, changes: Mapping[str, V | None]) -> Sharded[V]:
        """A new mapping: this one with `changes` applied (a value of None removes the key)."""
        shards = list(self._shards)
        mask = self._mask
        copied: set[int] = set()
        length = self._len
        for key, change in changes.items():
            index = hash(key) & mask
            shard = shards[index]
            if index not in copied:
                shard = shards[index] = dict(shard)
                copied.add(index)
            if change is None:
                length -= shard.pop(key, _MISSING) is not _MISSING
            else:
                length += key not in shard
                shard[key] = change
        if length > 4 * len(shards) * _PER_SHARD and len(shards) < _MAX_SHARDS:
            return Sharded(chain.from_iterable(shard.items() for shard in shards), length)
        return Sharded._of(tuple(shards), length)

    def __getitem__(self, key: str) -> V:
        return self._shards[hash(key) & self._mask][key]

    @overload
    def get(self, key: str, /) -> V | None: ...
    @overload
    def get(self, key: str, default: V | T, /) -> V | T: ...
    def get(self, key: str, default: object = None, /) -> object:
        # Mapping's own get goes through __getitem__ and a KeyError: a batch asks for every touched task
        return self._shards[hash(key) & self._mask].get(key, default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._shards[hash(key) & self._mask]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        return chain.from_iterable(self._shards)


class ShardedBuilder(Generic[V]):
    """A Sharded mapping filled one key at a time (a snapshot's build adds its tasks as it walks them, yielding to
    the event loop between slices), then `build()`."""

    __slots__ = ("length", "mask", "shards")

    def __init__(self, length_hint: int) -> None:
        count = _shard_count(length_hint)
        self.shards: tuple[dict[str, V], ...] = tuple({} for _ in range(count))
        self.mask = count - 1
        self.length = 0

    def add(self, key: str, value: V) -> None:
        shard = self.shards[hash(key) & self.mask]
        self.length += key not in shard
        shard[key] = value

    def build(self) -> Sharded[V]:
        return Sharded._of(self.shards, self.length)
