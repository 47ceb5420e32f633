"""The one way an answer derived from a snapshot reaches a client: the rendered body or its compressed variant,
ETag and 304, Cache-Control and the ASGI sends. The running list, a filtered list, one task, the finished list
and the stats all go through `Delivery.ready` (a poll of a fresh snapshot calls it before routing)."""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.snapshot.body import ENCODINGS, Rendered, variant_etag
from service.snapshot.snapshot import Snapshot

Header = tuple[bytes, bytes]
_JSON = (b"content-type", b"application/json")
_VARY = (b"vary", b"Accept-Encoding")
# A live scan's answer is stale as soon as it is sent: every request scans again.
_LIVE = (b"cache-control", b"no-cache")
MIN_COMPRESS_BYTES = 1024
_BYTES_PER_YIELD = 2 * 1024 * 1024  # a response gives the event loop a turn after sending this much
_MAX_HEADER_SETS = 1024  # header lists kept for reuse; pollers repeat the same few


class Answer(NamedTuple):
    status: int
    headers: list[Header]  # a list of the request's own: middleware may change it as it passes
    chunks: Iterable[bytes]  # a large body's are joined as they are sent


@dataclass(slots=True)
class ServeCounters:
    """Answers derived from a snapshot, counted where they are sent."""

    served_from_snapshot: int = 0
    served_by_live_scan: int = 0
    not_modified: int = 0


def choose_encoding(accept_encoding: str | None) -> str | None:
    """The encoding of ENCODINGS the client accepts (q > 0), or None for the identity."""
    if not accept_encoding:
        return None
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if name not in ENCODINGS:
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            return name
    return None


# Pollers repeat the same few header values; a cached answer keeps the per-request work near none.
_encoding = functools.lru_cache(maxsize=64)(choose_encoding)


def _listed_tags(if_none_match: str) -> Iterator[str]:
    for tag in if_none_match.split(","):
        tag = tag.strip()
        yield tag[2:] if tag.startswith("W/") else tag  # If-None-Match compares weakly


def etag_matches(etag: str, if_none_match: str | None) -> bool:
    """Whether `If-None-Match` names the body tagged `etag`, in any of its encodings (they carry the same data),
    or is `*`."""
    if not if_none_match:
        return False
    if if_none_match == etag:  # what a poller sends back, nearly always
        return True
    stem = etag[:-1]
    return any(
        tag == "*" or (tag.startswith(stem) and _is_variant(tag[len(stem) :])) for tag in _listed_tags(if_none_match)
    )


def _is_variant(rest: str) -> bool:
    return rest == '"' or (rest.startswith("-") and rest.endswith('"') and rest[1:-1].isalpha())


def request_headers(scope: Scope) -> tuple[str | None, str | None]:
    """`If-None-Match` and `Accept-Encoding` in one pass over the request's headers (the first of each)."""
    if_none_match = accept_encoding = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if if_none_match is None:
                if_none_match = value.decode("latin-1")
        elif name == b"accept-encoding" and accept_encoding is None:
            accept_encoding = value.decode("latin-1")
    return if_none_match, accept_encoding


class Delivery:
    """Answers from snapshots: `ready` without an await when nothing has to be made first, `send` in any case."""

    def __init__(self, refresh_interval: float) -> None:
        self._interval = refresh_interval
        self.counters = ServeCounters()
        # (etag, generation, status, encoding, max-age) -> headers; each request gets a copy
        self._headers: dict[tuple[str, int, int, str | None, int], list[Header]] = {}

    def ready(self, scope: Scope, rendered: Rendered, snapshot: Snapshot, live: bool) -> Answer | None:
        """The answer to a read of `rendered`, derived from `snapshot` (or from a live scan that made it: then
        never a 304, and not to be cached): a 304, the body, or its compressed variant once made. None while that
        variant is still to be made (`send` makes it)."""
        if_none_match, accept_encoding = request_headers(scope)
        body = rendered.body
        # a small body gains nothing from compression (gzip's own header and trailer make a tiny one larger)
        encoding = _encoding(accept_encoding) if body.length >= MIN_COMPRESS_BYTES else None
        max_age = -1 if live else max(0, math.floor(self._interval - snapshot.age()))
        counters = self.counters
        if not live and etag_matches(rendered.etag, if_none_match):
            counters.served_from_snapshot += 1
            counters.not_modified += 1
            return Answer(304, self._header_list(rendered, snapshot, 304, encoding, max_age, 0), ())
        if encoding is not None:
            made = body.encoded_now(encoding)
            if made is None:
                return None
            body = made
        if live:
            counters.served_by_live_scan += 1
        else:
            counters.served_from_snapshot += 1
        return Answer(200, self._header_list(rendered, snapshot, 200, encoding, max_age, body.length), body.chunks)

    async def send(self, scope: Scope, send: Send, rendered: Rendered, snapshot: Snapshot, live: bool) -> None:
        """`ready`'s answer, sent; the compressed variant it needs is made first (once per body, by the first
        request for it)."""
        while (answer := self.ready(scope, rendered, snapshot, live)) is None:
            encoding = _encoding(request_headers(scope)[1])
            if encoding is not None:
                await rendered.body.encoded(encoding)
        await send_chunks(scope, send, *answer)

    def response(self, rendered: Rendered, snapshot: Snapshot, live: bool) -> Response:
        """`send` as the Response a Starlette handler returns."""
        return _Delivered(self, rendered, snapshot, live)

    def _header_list(
        self, rendered: Rendered, snapshot: Snapshot, status: int, encoding: str | None, max_age: int, length: int
    ) -> list[Header]:
        key = (rendered.etag, snapshot.generation, status, encoding, max_age)
        headers = self._headers.get(key)
        if headers is None:
            if len(self._headers) >= _MAX_HEADER_SETS:
                self._headers.clear()
            tag = variant_etag(rendered.etag, encoding).encode()
            headers = [(b"etag", tag), (b"x-snapshot-generation", b"%d" % snapshot.generation), _VARY]
            headers.append(_LIVE if max_age < 0 else (b"cache-control", b"max-age=%d" % max_age))
            if status != 304:  # 304: no body, and no Content-Length that would not be the body's
                headers.insert(0, _JSON)
                if encoding is not None:
                    headers.append((b"content-encoding", encoding.encode()))
                headers.append((b"content-length", b"%d" % length))
            self._headers[key] = headers
        return list(headers)


class _Delivered(Response):
    """A delivery, as a Starlette handler returns it: the answer is chosen when it is sent."""

    def __init__(self, delivery: Delivery, rendered: Rendered, snapshot: Snapshot, live: bool) -> None:
        self.status_code = 200
        self.background = None
        self._args = (delivery, rendered, snapshot, live)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        delivery, rendered, snapshot, live = self._args
        await delivery.send(scope, send, rendered, snapshot, live)


async def send_chunks(
    scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]], chunks: Iterable[bytes]
) -> int:
    """An ASGI response of `chunks` (none for a HEAD request); the bytes of body sent."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if scope["method"] == "HEAD":
        chunks = ()
    if isinstance(chunks, tuple) and len(chunks) <= 1:  # nearly every answer: no body (304, HEAD) or one chunk
        body = chunks[0] if chunks else b""
        await send({"type": "http.response.body", "body": body})
        return len(body)
    sent = unyielded = 0
    pending = iter(chunks)
    chunk = next(pending, b"")
    while True:
        after = next(pending, None)  # a large body's next piece made here (its segments joined), between two sends
        await send({"type": "http.response.body", "body": chunk, "more_body": after is not None})
        sent += len(chunk)
        if after is None:
            return sent
        unyielded += len(chunk)
        chunk = after
        if unyielded >= _BYTES_PER_YIELD:
            # A send that the transport buffers (or drops: the client is gone) returns without yielding;
            # a body of a thousand chunks would otherwise hold the event loop from the first to the last.
            unyielded = 0
            await asyncio.sleep(0)
