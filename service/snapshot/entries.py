"""A read-only mapping made from the previous one plus a few changes, without copying the whole of it."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Final, Generic, TypeVar, overload

V = TypeVar("V")
T = TypeVar("T")
_GONE: Final = object()  # in the changes: the key was removed

# The changes are copied with each new mapping; past this many (or 16 times the square root of the base's size, if
# more) they are folded into a new base: the copies of the layer and the copy of the base cost about the same.
_FOLD_AT = 4096


class Layered(Mapping[str, V], Generic[V]):
    """`base` with `changes` over it, both never changed after construction: what a change feed's batch makes of
    the previous snapshot's task index. `with_changes` costs the changes held so far, not the size of the base."""

    __slots__ = ("_base", "_changes", "_len")

    def __init__(self, base: dict[str, V], changes: dict[str, object] | None = None, length: int | None = None) -> None:
        self._base = base
        self._changes: dict[str, object] = changes or {}
        self._len = len(base) if length is None else length

    def with_changes(self, changes: Mapping[str, V | None]) -> Layered[V]:
        """A new mapping: this one with `changes` applied (a value of None removes the key)."""
        layer = dict(self._changes)
        length = self._len
        for key, change in changes.items():
            had = key in self
            value: object = _GONE if change is None else change
            if value is _GONE:
                if had:
                    layer[key] = _GONE
                    length -= 1
            else:
                layer[key] = value
                length += not had
        if len(layer) > max(_FOLD_AT, math.isqrt(len(self._base)) * 16):
            base = dict(self._base)
            for key, value in layer.items():
                if value is _GONE:
                    base.pop(key, None)
                else:
                    base[key] = value  # type: ignore[assignment]
            return Layered(base)
        return Layered(self._base, layer, length)

    def __getitem__(self, key: str) -> V:
        value = self._changes.get(key, self)  # `self` as a marker: never a value
        if value is self:
            return self._base[key]
        if value is _GONE:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    @overload
    def get(self, key: str, /) -> V | None: ...
    @overload
    def get(self, key: str, default: V | T, /) -> V | T: ...
    def get(self, key: str, default: object = None, /) -> object:
        # Mapping's own get goes through __getitem__ and a KeyError: a batch asks for every touched task
        value = self._changes.get(key, self)
        if value is self:
            return self._base.get(key, default)
        return default if value is _GONE else value

    def __contains__(self, key: object) -> bool:
        value = self._changes.get(key, self)  # type: ignore[call-overload]
        if value is self:
            return key in self._base
        return value is not _GONE

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        changes = self._changes
        for key in self._base:
            if key not in changes:
                yield key
        for key, value in changes.items():
            if value is not _GONE:
                yield key
