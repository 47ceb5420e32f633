"""A response body rendered once: pre-joined chunks, kept by reference where a part is large or unchanged, and
compressed variants made once on demand. A large body's segments are joined when first sent, and kept."""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

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

    __slots__ = ("_chunks", "_encoded", "_made", "_runs", "length")

    def __init__(self, chunks: Sequence[bytes], length: int | None = None) -> None:
        """`length`: the chunks' total, when the caller knows it."""
        self._chunks = tuple(chunks)
        self._runs: _Runs | None = None
        self.length = sum(map(len, self._chunks)) if length is None else length
        self._encoded: dict[str, asyncio.Future[RenderedBody]] = {}
        self._made: dict[str, RenderedBody] = {}  # the variants made: what every compressed poll looks up

    @classmethod
    def of_runs(
        cls,
        prefix: bytes,
        runs: Callable[[], Iterable[tuple[bytes, ...]]],
        length: int,
        separator: bytes,
        suffix: bytes,
    ) -> RenderedBody:
        """The body `prefix`, the items in the chunks of the `runs()` in order (`length` bytes in all, each item
        after `separator`, none before the first), `suffix`. A run's chunks are made when a send first asks for them
        (a segment's, or a group of segments'), and kept by what made them: a change feed's batch makes a few new
        segments, shares the others with the previous body, and joins nothing."""
        body = cls((), length)
        body._runs = _Runs(prefix, runs, separator, suffix)
        return body

    @property
    def chunks(self) -> Iterable[bytes]:
        """The chunks in order; a large body's are joined as they are iterated."""
        runs = self._runs
        return self._chunks if runs is None else runs.chunks()

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


def _gzip(chunks: Iterable[bytes], length: int) -> RenderedBody:
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


Join = Callable[[tuple[Any, ...]], tuple[bytes, ...]]


class Segment:
    """A run of items as rendered into a body, kept so that the next body can take it as it is: the items, their
    bytes' length (each item after its separator), and the chunks they join into, made when first asked for (a
    send, a compression) and then kept. Two threads may both make them: the same bytes, and either is kept."""

    __slots__ = ("_chunks", "_join", "items", "length")

    def __init__(self, items: tuple[Any, ...], length: int, join: Join, chunks: tuple[bytes, ...] | None = None):
        self.items = items  # compared by identity: an item is a new object whenever its rendering changes
        self.length = length
        self._join = join
        self._chunks = chunks

    @property
    def chunks(self) -> tuple[bytes, ...]:
        """The items' parts, each item after the separator, in chunks (a part of OWN_CHUNK_BYTES or more is a chunk
        of its own, by reference; none is empty)."""
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = self._join(self.items)
        return chunks

    @property
    def joined(self) -> bool:
        """Whether the chunks are made."""
        return self._chunks is not None


def joiner(parts: Callable[[Any], Sequence[bytes]], separator: bytes) -> Join:
    """How items whose bytes are `parts(item)` join into a segment's chunks, each after `separator`."""

    def join(items: tuple[Any, ...]) -> tuple[bytes, ...]:
        chunks: list[bytes] = []
        pending: list[bytes] = []
        for item in items:
            pending.append(separator)
            for piece in parts(item):
                if len(piece) >= OWN_CHUNK_BYTES:
                    chunks += (b"".join(pending), piece)
                    pending = []
                else:
                    pending.append(piece)
        chunks.append(b"".join(pending))
        return tuple(chunk for chunk in chunks if chunk)

    return join


class _Runs(NamedTuple):
    """A body's chunks as its runs make them: what `RenderedBody.of_runs` iterates."""

    prefix: bytes
    runs: Callable[[], Iterable[tuple[bytes, ...]]]  # walked again at each send
    separator: bytes
    suffix: bytes

    def chunks(self) -> Iterator[bytes]:
        """The body in sends of about CHUNK_BYTES: the runs' small chunks copied together (one send each, not one
        per segment), a chunk of OWN_CHUNK_BYTES or more sent as it is."""
        gathered, size = [self.prefix], len(self.prefix)
        pending = itertools.chain.from_iterable(self.runs())
        for chunk in pending:  # nothing before the first item
            pending = itertools.chain((chunk[len(self.separator) :],), pending)
            break
        for chunk in pending:
            if len(chunk) >= OWN_CHUNK_BYTES:
                if size:
                    yield b"".join(gathered)
                    gathered, size = [], 0
                yield chunk
                continue
            gathered.append(chunk)
            size += len(chunk)
            if size >= CHUNK_BYTES:
                yield b"".join(gathered)
                gathered, size = [], 0
        gathered.append(self.suffix)
        yield b"".join(gathered)


async def cut_segments(
    items: Sequence[T],
    parts: Callable[[T], Sequence[bytes]],
    separator: bytes,
    *,
    ends_segment: Callable[[T], bool] = lambda item: False,
    previous: Sequence[Segment] = (),
    join: Join | None = None,
) -> tuple[Segment, ...]:
    """`items` cut into segments, each item's bytes `separator` and its `parts` (joined by `join`, by default
    `joiner(parts, separator)`, when a segment is first sent).

    Items are cut into segments after each item `ends_segment` names (a rule of the item itself, so that the
    cuts stay where they were when other items change) or at CHUNK_BYTES. A segment of `previous` holding the
    very same items is taken as it is, by reference: a refresh in which a few tasks changed makes a few
    segments, and the body shares the others (their chunks too, once made). The event loop gets a turn every
    few thousand items."""
    join = join or joiner(parts, separator)
    reusable = {id(segment.items[0]): segment for segment in previous}  # `previous` keeps its items alive
    segments: list[Segment] = []
    run: list[T] = []
    run_bytes = 0
    step = len(separator)
    for index, item in enumerate(items):
        run.append(item)
        run_bytes += step + sum(map(len, parts(item)))
        if ends_segment(item) or run_bytes - step * len(run) >= CHUNK_BYTES:
            segments.append(_segment(run, run_bytes, reusable, join))
            run, run_bytes = [], 0
        if index % 4096 == 4095:
            await asyncio.sleep(0)
    if run:
        segments.append(_segment(run, run_bytes, reusable, join))
    return tuple(segments)


def assemble_runs(
    prefix: bytes, runs: Callable[[], Iterable[tuple[bytes, ...]]], length: int, separator: bytes, suffix: bytes
) -> RenderedBody:
    """The body made of the items in the chunks of the `runs()` (`length` bytes; each item's bytes start with
    `separator`) between `prefix` and `suffix`: one chunk, joined now, up to ONE_CHUNK_BYTES (one send per
    request); past it, the runs' chunks, made as they are first sent (`RenderedBody.of_runs`)."""
    if length:  # nothing before the first item
        length -= len(separator)
    length += len(prefix) + len(suffix)
    body = RenderedBody.of_runs(prefix, runs, length, separator, suffix)
    if length <= ONE_CHUNK_BYTES:
        return RenderedBody([b"".join(body.chunks)], length)
    return body


def _segment(run: list[T], length: int, reusable: dict[int, Segment], join: Join) -> Segment:
    old = reusable.get(id(run[0]))
    if old is not None and len(old.items) == len(run) and all(a is b for a, b in zip(old.items, run, strict=True)):
        return old
    return Segment(tuple(run), length, join)


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
