"""A bounded LRU of rendered answers, so that the same query against the same data is rendered once."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable

from service.snapshot.body import Rendered


def derived_etag(base: str, key: object) -> str:
    """A strong ETag for an answer derived from the data tagged `base` by the normalised query `key`."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()
    return f'"{base.strip(chr(34))}.{digest}"'


def content_etag(body: bytes) -> str:
    """A strong ETag from the body itself: equal bodies, equal tags, across snapshots and restarts."""
    return f'"c-{hashlib.blake2b(body, digest_size=12).hexdigest()}"'


class ResultCache:
    """At most `max_entries` answers holding at most `max_bytes` in total; least recently used go first.

    An answer larger than `max_bytes` is served but not kept: one huge unpaged result must not push out
    everything else. `max_entries = 0` turns the cache off."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Rendered] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get_or_render(self, key: Hashable, render: Callable[[], Rendered]) -> Rendered:
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return found
        self.misses += 1
        rendered = render()
        size = rendered.body.length
        if self._max_entries == 0 or size > self._max_bytes:
            return rendered
        self._entries[key] = rendered
        self._bytes += size
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.body.length
            self.evictions += 1
        return rendered

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_entries": self._max_entries,
            "max_bytes": self._max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
