"""A response body rendered once: pre-joined chunks, kept by reference where a part is large or unchanged, and
compressed variants made once on demand."""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import NamedTuple, TypeVar

# Chunks of about this size: joining one is quick enough to yield to the event loop between two, and a request
# is a few hundred sends even for a body of hundreds of megabytes.
CHUNK_BYTES = 256 * 1024
# A part at least this large becomes a chunk of its own, by reference: big tasks are not copied into the body.
OWN_CHUNK_BYTES = 64 * 1024
# A body up to this size is one chunk even when it holds a large task: one send per request.
ONE_CHUNK_BYTES = 1024 * 1024
# Compressing a large body at zlib's default level takes longer than a refresh interval, every interval;
# level 1 is much faster and still shrinks this JSON well (docs/performance.md).
_SMALL_BODY = 1024 * 1024
_LEVEL_SMALL, _LEVEL_LARGE = 6, 1

ENCODINGS = ("gzip",)
T = TypeVar("T")


class RenderedBody:
    """Immutable bytes in chunks; `encoded()` gives the compressed variants, each made once, single-flight."""

    __slots__ = ("_chunks", "_encoded", "_made", "_parts", "length")

    def __init__(self, chunks: Sequence[bytes], length: int | None = None) -> None:
        """`length`: the chunks' total, when the caller knows it."""
        self._chunks: tuple[bytes, ...] | None = tuple(chunks)
        self._parts: Sequence[Sequence[bytes]] = ()
        self.length = sum(map(len, self._chunks)) if length is None else length
        self._encoded: dict[str, asyncio.Future[RenderedBody]] = {}
        self._made: dict[str, RenderedBody] = {}  # the variants made: what every compressed poll looks up

    @classmethod
    def in_parts(cls, parts: Sequence[Sequence[bytes]], length: int) -> RenderedBody:
        """The body of `parts`' chunks in order, `length` bytes, put in one sequence only when first sent: a change
        feed's batch links a few new parts to the many it shares with the previous body, whatever their chunks."""
        body = cls((), length)
        body._chunks, body._parts = None, parts
        return body

    @property
    def chunks(self) -> tuple[bytes, ...]:
        chunks = self._chunks
        if chunks is None:  # two threads may both make it: the same tuple, and either is kept
            chunks = self._chunks = tuple(itertools.chain.from_iterable(self._parts))
        return chunks

    def __len__(self) -> int:
        return self.length

    def __bytes__(self) -> bytes:
        return b"".join(self.chunks)

    def is_encoded(self, encoding: str) -> bool:
        return self.encoded_now(encoding) is not None

    def encoded_now(self, encoding: str) -> RenderedBody | None:
        """The variant compressed with `encoding` if it is made, without waiting; else None."""
        return self._made.get(encoding)

    async def encoded(self, encoding: str) -> RenderedBody:
        """This body compressed with `encoding` (one of ENCODINGS): made in a thread on first demand, then kept."""
        if encoding not in ENCODINGS:
            raise ValueError(f"unsupported encoding {encoding!r}")
        future = self._encoded.get(encoding)
        if future is None or (future.done() and (future.cancelled() or future.exception() is not None)):
            # zlib releases the GIL: the event loop keeps serving while a large body compresses
            future = asyncio.ensure_future(asyncio.to_thread(_gzip, self.chunks, self.length))
            self._encoded[encoding] = future
        # shield: a request that goes away must not cancel the work others wait for
        made = self._made[encoding] = await asyncio.shield(future)
        return made


def _gzip(chunks: tuple[bytes, ...], length: int) -> RenderedBody:
    level = _LEVEL_SMALL if length <= _SMALL_BODY else _LEVEL_LARGE
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: the gzip container
    out: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        part = compressor.compress(chunk)
        if part:
            pending.append(part)
            size += len(part)
        if size >= CHUNK_BYTES:
            out.append(b"".join(pending))
            pending, size = [], 0
    pending.append(compressor.flush())
    out.append(b"".join(pending))
    return RenderedBody(out)


class Segment(NamedTuple):
    """A run of items as rendered into a body, kept so that the next body can take it as it is."""

    items: tuple[object, ...]  # compared by identity: an item is a new object whenever its rendering changes
    chunks: tuple[bytes, ...]  # the items' parts, each item after the separator


async def render_body(
    prefix: bytes,
    items: Sequence[T],
    parts: Callable[[T], Sequence[bytes]],
    separator: bytes,
    suffix: bytes,
    *,
    ends_segment: Callable[[T], bool] = lambda item: False,
    previous: Sequence[Segment] = (),
) -> tuple[RenderedBody, tuple[Segment, ...]]:
    """`prefix + separator.join(b"".join(parts(item)) for item in items) + suffix` in chunks, and its segments
    (see `cut_segments`)."""
    segments = await cut_segments(items, parts, separator, ends_segment=ends_segment, previous=previous)
    return assemble(prefix, segments, separator, suffix), segments


async def cut_segments(
    items: Sequence[T],
    parts: Callable[[T], Sequence[bytes]],
    separator: bytes,
    *,
    ends_segment: Callable[[T], bool] = lambda item: False,
    previous: Sequence[Segment] = (),
) -> tuple[Segment, ...]:
    """`items` rendered and cut into segments, each item's chunks after `separator`.

    Items are cut into segments after each item `ends_segment` names (a rule of the item itself, so that the
    cuts stay where they were when other items change) or at CHUNK_BYTES. A segment of `previous` holding the
    very same items is taken as it is, by reference: a refresh in which a few tasks changed renders and copies
    a few segments, not the whole body. A part of OWN_CHUNK_BYTES or more is a chunk of its own, by reference.
    The event loop gets a turn after every CHUNK_BYTES rendered (and every few thousand items)."""
    reusable = {id(segment.items[0]): segment for segment in previous}  # `previous` keeps its items alive
    segments: list[Segment] = []
    run: list[T] = []
    run_parts: list[Sequence[bytes]] = []
    run_bytes = rendered = 0
    for index, item in enumerate(items):
        item_parts = parts(item)
        run.append(item)
        run_parts.append(item_parts)
        run_bytes += sum(map(len, item_parts))
        if ends_segment(item) or run_bytes >= CHUNK_BYTES:
            segment = _segment(run, run_parts, reusable, separator)
            if segment is not reusable.get(id(run[0])):
                rendered += run_bytes
            segments.append(segment)
            run, run_parts, run_bytes = [], [], 0
        if rendered >= CHUNK_BYTES or index % 4096 == 4095:
            rendered = 0
            await asyncio.sleep(0)
    if run:
        segments.append(_segment(run, run_parts, reusable, separator))
    return tuple(segments)


def assemble(prefix: bytes, segments: Sequence[Segment], separator: bytes, suffix: bytes) -> RenderedBody:
    """The body made of `segments` (each item's chunks start with `separator`) between `prefix` and `suffix`."""
    chunks = tuple(itertools.chain.from_iterable(map(attrgetter("chunks"), segments)))
    return assemble_parts(prefix, [chunks], sum(map(len, chunks)), separator, suffix)


def assemble_parts(
    prefix: bytes, parts: Sequence[Sequence[bytes]], length: int, separator: bytes, suffix: bytes
) -> RenderedBody:
    """The body made of the items in `parts`' chunks (`length` bytes; each item's chunks start with `separator`,
    no chunk is empty) between `prefix` and `suffix`."""
    parts = [part for part in parts if part]
    if parts:  # nothing before the first item
        first = parts[0][0][len(separator) :]
        parts[0] = (first, *parts[0][1:]) if first else parts[0][1:]
        length -= len(separator)
    length += len(prefix) + len(suffix)
    parts = [(prefix,), *parts, (suffix,)]
    if length <= ONE_CHUNK_BYTES:
        return RenderedBody([b"".join(itertools.chain.from_iterable(parts))], length)  # one send per request
    return RenderedBody.in_parts(parts, length)


def _segment(run: list[T], run_parts: list[Sequence[bytes]], reusable: dict[int, Segment], separator: bytes) -> Segment:
    old = reusable.get(id(run[0]))
    if old is not None and len(old.items) == len(run) and all(a is b for a, b in zip(old.items, run, strict=True)):
        return old
    chunks: list[bytes] = []
    pending: list[bytes] = []
    for item_parts in run_parts:
        pending.append(separator)
        for piece in item_parts:
            if len(piece) >= OWN_CHUNK_BYTES:
                chunks.append(b"".join(pending))
                chunks.append(piece)
                pending = []
            else:
                pending.append(piece)
    if pending:
        chunks.append(b"".join(pending))
    return Segment(tuple(run), tuple(chunk for chunk in chunks if chunk))


class Rendered(NamedTuple):
    """An answer ready to be sent as many times as it is asked for: its body and the body's strong ETag (a
    compressed variant's tag adds the encoding, see `variant_etag`)."""

    body: RenderedBody
    etag: str

    @classmethod
    def of(cls, body: bytes, etag: str) -> Rendered:
        return cls(RenderedBody((body,)), etag)


def variant_etag(etag: str, encoding: str | None) -> str:
    """The strong ETag of a body tagged `etag` as sent with `encoding` (None: as is)."""
    return etag if encoding is None else f'{etag[:-1]}-{encoding}"'
