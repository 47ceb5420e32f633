from __future__ import annotations

import asyncio
import functools
import gzip
import zlib
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import TypeVar

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.http.delivery import choose_encoding, send_chunks
from service.snapshot.body import (
    CHUNK_BYTES,
    OWN_CHUNK_BYTES,
    RenderedBody,
    Segment,
    assemble_runs,
    cut_segments,
)

pytestmark = pytest.mark.anyio

T = TypeVar("T")


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
    """`prefix + separator.join(b"".join(parts(item)) for item in items) + suffix`, and its segments: the body of
    segments as the snapshot makes it (`cut_segments`, then `assemble_runs` over the segments' chunks)."""
    segments = await cut_segments(items, parts, separator, ends_segment=ends_segment, previous=previous)
    runs = functools.partial(map, attrgetter("chunks"), segments)
    return assemble_runs(prefix, runs, sum(segment.length for segment in segments), separator, suffix), segments


def items(count: int, size: int) -> list[tuple[bytes, bytes, bytes]]:
    return [(b'{"i":%d,"d":"' % i, b"x" * size, b'"}') for i in range(count)]


def same(item: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return item


async def render(prefix: bytes, parts: list[tuple[bytes, ...]], separator: bytes, suffix: bytes) -> RenderedBody:
    body, _ = await render_body(prefix, parts, same, separator, suffix)
    return body


async def test_render_body_is_the_joined_items_in_bounded_chunks() -> None:
    parts = items(3000, 500)
    body = await render(b"[", parts, b",", b"]")
    assert bytes(body) == b"[" + b",".join(b"".join(p) for p in parts) + b"]"
    assert len(body) == len(bytes(body))
    assert len(tuple(body.chunks)) > 1
    assert all(len(chunk) < CHUNK_BYTES + 1024 for chunk in body.chunks)


async def test_large_pieces_are_chunks_of_their_own_by_reference() -> None:
    big = b"y" * OWN_CHUNK_BYTES
    parts = [(b'{"a":', big, b"}"), *items(4000, 300), (b'{"b":', b"1", b"}")]  # over ONE_CHUNK_BYTES in all
    body = await render(b"[", parts, b",", b"]")
    assert bytes(body).startswith(b'[{"a":' + big + b'},{"i":0,')
    assert bytes(body).endswith(b',{"b":1}]')
    assert any(chunk is big for chunk in body.chunks)  # not copied into a joined chunk


async def test_a_small_body_is_one_chunk() -> None:
    big = b"y" * OWN_CHUNK_BYTES
    body = await render(b"[", [(b'{"a":', big, b"}"), (b'{"b":', b"1", b"}")], b",", b"]")
    assert body.chunks == (b'[{"a":' + big + b'},{"b":1}]',)


async def test_render_body_yields_to_the_event_loop() -> None:
    ticks = 0

    async def count() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    counter = asyncio.ensure_future(count())
    await render(b"[", items(30_000, 10), b",", b"]")  # a turn every few thousand items
    counter.cancel()
    assert ticks >= 5


async def test_a_large_body_is_joined_as_it_is_sent_and_its_segments_keep_their_chunks() -> None:
    items_ = [Item(i, 2000) for i in range(2000)]  # ~4 MB: past ONE_CHUNK_BYTES
    every_tenth = lambda item: item.number % 10 == 9  # noqa: E731
    first, segments = await render_body(b"[", items_, Item.parts, b",", b"]", ends_segment=every_tenth)
    assert not any(segment.joined for segment in segments)  # nothing joined until a send or a compression
    chunks = iter(first.chunks)
    sent = next(chunks)
    assert sent.startswith(b'[{"i":0,')  # the first item without the separator before it
    assert CHUNK_BYTES <= len(sent) < CHUNK_BYTES + OWN_CHUNK_BYTES  # small chunks sent together
    joined = [segment.joined for segment in segments]
    assert joined[0] and not joined[-1]  # joined as they are sent
    assert bytes(first) == b"[" + b",".join(b"".join(item.parts()) for item in items_) + b"]"
    assert all(segment.joined for segment in segments)
    changed = list(items_)
    changed[55] = Item(55, 10)
    second, again = await render_body(
        b"[", changed, Item.parts, b",", b"]", ends_segment=every_tenth, previous=segments
    )
    assert [segment.joined for segment in again].count(False) == 1  # the new segment; the others' chunks kept
    assert len(second) == len(bytes(second)) == len(bytes(first)) - 1990


async def test_empty_list() -> None:
    body = await render(b"[", [], b",", b"]")
    assert (bytes(body), body.chunks) == (b"[]", (b"[]",))


async def test_gzip_variant_is_made_once_and_shared() -> None:
    body = await render(b"[", items(2000, 300), b",", b"]")
    assert not body.is_encoded("gzip")
    first, second = await asyncio.gather(body.encoded("gzip"), body.encoded("gzip"))
    assert first is second is await body.encoded("gzip")
    assert body.is_encoded("gzip")
    assert gzip.decompress(bytes(first)) == bytes(body)
    assert len(first) < len(body) / 5
    with pytest.raises(ValueError):
        await body.encoded("compress")


async def test_a_variant_whose_first_requester_went_away_is_ready_for_the_next() -> None:
    body = await render(b"[", items(2000, 300), b",", b"]")
    first = asyncio.ensure_future(body.encoded("gzip"))
    await asyncio.sleep(0)  # the compression has started in its thread
    first.cancel()  # the client that asked first is gone; the work goes on for the others
    while not body._encoded["gzip"].done():
        await asyncio.sleep(0.001)
    assert body.encoded_now("gzip") is None  # done, but nobody took it yet: the next request does
    made = await body.encoded("gzip")
    assert body.encoded_now("gzip") is made  # and from then on every poll finds it without waiting
    assert gzip.decompress(bytes(made)) == bytes(body)


async def test_large_bodies_are_compressed_at_the_fast_level() -> None:
    body = RenderedBody([bytes(range(256)) * 8192])  # 2 MiB: over the small-body limit
    packed = bytes(await body.encoded("gzip"))
    assert zlib.decompress(packed, 16 + zlib.MAX_WBITS) == bytes(body)
    assert packed[8] == 4  # gzip header XFL: 4 = the fastest algorithm


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("gzip", "gzip"),
        ("br, gzip;q=0.5", "gzip"),
        ("GZIP", "gzip"),
        ("gzip;q=0", None),
        ("gzip; q=0.0", None),
        ("gzip;q=oops", None),
        ("deflate, br", None),
        ("*", None),  # the identity is always acceptable; compress only when asked by name
    ],
)
def test_choose_encoding(header: str | None, expected: str | None) -> None:
    assert choose_encoding(header) == expected


async def test_send_chunks_sends_them_with_exact_length_and_no_body_for_head() -> None:
    body = RenderedBody([b"abc", b"defg", b"h"])

    class Sends:  # an ASGI endpoint (a plain function would be taken for a request handler)
        def __init__(self, status: int, headers: list[tuple[bytes, bytes]], chunks: tuple[bytes, ...]) -> None:
            self.answer = (status, headers, chunks)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await send_chunks(scope, send, *self.answer)

    endpoint = Sends(200, [(b"content-type", b"application/json"), (b"content-length", b"8")], body.chunks)
    not_modified = Sends(304, [(b"etag", b'"x"')], ())
    app = Starlette(routes=[Route("/", endpoint, methods=["GET"]), Route("/304", not_modified, methods=["GET"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        got = await client.get("/")
        head = await client.head("/")
        unchanged = await client.get("/304")
    assert (got.content, got.headers["content-length"]) == (b"abcdefgh", "8")
    assert (head.content, head.headers["content-length"]) == (b"", "8")
    assert (unchanged.status_code, unchanged.content, unchanged.headers["etag"]) == (304, b"", '"x"')
    assert "content-length" not in unchanged.headers


class Item:
    def __init__(self, number: int, size: int) -> None:
        self.number = number
        self.pieces = (b'{"i":%d,"d":"' % number, b"x" * size, b'"}')

    def parts(self) -> tuple[bytes, ...]:
        return self.pieces


async def test_segments_holding_the_same_items_are_taken_as_they_are() -> None:
    items_ = [Item(i, 2000) for i in range(2000)]  # ~4 MB
    every_tenth = lambda item: item.number % 10 == 9  # noqa: E731
    first, segments = await render_body(b"[", items_, Item.parts, b",", b"]", ends_segment=every_tenth)
    assert all(len(segment.items) == 10 for segment in segments)
    changed = list(items_)
    changed[55] = Item(55, 10)  # one item re-rendered, one removed, one added
    del changed[1203]
    changed.insert(1500, Item(9990, 100))
    second, again = await render_body(
        b"[", changed, Item.parts, b",", b"]", ends_segment=every_tenth, previous=segments
    )
    assert bytes(second) == b"[" + b",".join(b"".join(item.parts()) for item in changed) + b"]"
    reused = len({id(segment) for segment in again} & {id(segment) for segment in segments})
    assert reused == len(again) - 3  # only the three segments that changed were rendered again
    kept = {id(chunk) for segment in segments for chunk in segment.chunks}
    again_chunks = [chunk for segment in again for chunk in segment.chunks]
    assert sum(1 for chunk in again_chunks if id(chunk) in kept) >= len(again_chunks) - 6  # by reference


async def test_segment_cuts_bound_the_chunks_without_any_item_ending_one() -> None:
    body, segments = await render_body(b"[", [Item(i, 1000) for i in range(3000)], Item.parts, b",", b"]")
    assert all(sum(len(chunk) for chunk in segment.chunks) < CHUNK_BYTES + 2000 for segment in segments)
    assert len(segments) > 1
