"""Server-sent events framing (the WHATWG HTML standard, "Server-sent events"): the bytes of an event, a comment and
a reconnection hint. Data is one line of JSON (JSON escapes every line break), so an event is one `data:` field."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

HEARTBEAT = b":\n\n"  # a comment: keeps proxies and clients from closing an idle stream, ignored by EventSource


def frame(event: bytes, generation: int, data: Sequence[bytes]) -> bytes:
    """One event as bytes: its type, its id (the generation, which a client sends back as Last-Event-ID) and its
    data (chunks joined)."""
    return b"".join((b"event: ", event, b"\nid: %d\ndata: " % generation, *data, b"\n\n"))


def frame_chunks(event: bytes, generation: int, data: Iterable[bytes]) -> Iterator[bytes]:
    """`frame` as chunks, the data's own in between, taken as they are sent: a large event is sent without being
    copied into one."""
    return itertools.chain((b"event: " + event + b"\nid: %d\ndata: " % generation,), data, (b"\n\n",))


def retry(milliseconds: int) -> bytes:
    """The reconnection delay a client should wait after the stream ends."""
    return b"retry: %d\n\n" % milliseconds


def last_event_id(value: bytes | None) -> int | None:
    """The generation a reconnecting client names in Last-Event-ID; None when absent or not one of our ids."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        return None
    return int(text)
