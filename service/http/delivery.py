"""How a snapshot is sent: ETag and 304, the compressed variant, and the cache headers pollers go by."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

from service.snapshot.body import choose_encoding
from service.snapshot.snapshot import Snapshot

Header = tuple[bytes, bytes]
_JSON = (b"content-type", b"application/json")
_VARY = (b"vary", b"Accept-Encoding")
# A live scan's answer is stale as soon as it is sent: every request scans again.
_LIVE = (b"cache-control", b"no-cache")
MIN_COMPRESS_BYTES = 1024


def _listed_tags(if_none_match: str) -> Iterator[str]:
    for tag in if_none_match.split(","):
        tag = tag.strip()
        yield tag[2:] if tag.startswith("W/") else tag  # If-None-Match compares weakly


def tag_matches(etag: str, if_none_match: str | None) -> bool:
    """Whether `If-None-Match` names `etag` (or is `*`)."""
    if not if_none_match:
        return False
    return if_none_match == etag or any(tag in ("*", etag) for tag in _listed_tags(if_none_match))


def etag_matches(snapshot: Snapshot, if_none_match: str | None) -> bool:
    """Whether `If-None-Match` names this snapshot, in any of its encodings (they carry the same data)."""
    if not if_none_match:
        return False
    if if_none_match == snapshot.etag:  # what a poller sends back, nearly always
        return True
    return any(
        tag == "*" or (tag.startswith(snapshot.etag[:-1]) and _is_variant(snapshot, tag))
        for tag in _listed_tags(if_none_match)
    )


def _is_variant(snapshot: Snapshot, tag: str) -> bool:
    rest = tag[len(snapshot.etag) - 1 :]
    return rest == '"' or (rest.startswith("-") and rest.endswith('"') and rest[1:-1].isalpha())


def cache_control(snapshot: Snapshot, refresh_interval: float, live: bool) -> Header:
    """`max-age` = the time left until the next refresh is due: pollers need not ask before then."""
    return _cache_control(_max_age(snapshot, refresh_interval, live))


def _max_age(snapshot: Snapshot, refresh_interval: float, live: bool) -> int:
    return -1 if live else max(0, math.floor(refresh_interval - snapshot.age()))


def _cache_control(max_age: int) -> Header:
    return _LIVE if max_age < 0 else (b"cache-control", b"max-age=%d" % max_age)


# Pollers repeat the same few header values; a cached answer keeps the per-request work near none.
_encoding = functools.lru_cache(maxsize=64)(choose_encoding)


class Answer(NamedTuple):
    status: int
    headers: list[Header]  # a list of the request's own: middleware may change it as it passes
    chunks: tuple[bytes, ...]


def ready_answer(
    snapshot: Snapshot,
    *,
    live: bool,
    refresh_interval: float,
    if_none_match: str | None,
    accept_encoding: str | None,
) -> Answer | None:
    """The answer to a read of `snapshot` when nothing has to be made for it first (a 304, the body, or its
    compressed variant once made), with no await; None while the compressed variant is still to be made."""
    # a small body gains nothing from compression (gzip's own header and trailer make a tiny one larger)
    encoding = _encoding(accept_encoding) if snapshot.body.length >= MIN_COMPRESS_BYTES else None
    max_age = _max_age(snapshot, refresh_interval, live)
    if not live and etag_matches(snapshot, if_none_match):
        return Answer(304, _headers(snapshot, 304, encoding, max_age), ())
    body = snapshot.body if encoding is None else snapshot.body.encoded_now(encoding)
    if body is None:
        return None
    return Answer(200, _headers(snapshot, 200, encoding, max_age, body.length), body.chunks)


async def make_variant(snapshot: Snapshot, accept_encoding: str | None) -> None:
    """Make the compressed variant `ready_answer` waits for (once per snapshot, on first demand)."""
    encoding = _encoding(accept_encoding)
    if encoding is not None:
        await snapshot.body.encoded(encoding)


def _headers(snapshot: Snapshot, status: int, encoding: str | None, max_age: int, length: int = 0) -> list[Header]:
    # made once per snapshot for each status, encoding and max-age; each request gets a copy
    key = (status, encoding, max_age)
    headers = snapshot.answer_headers.get(key)
    if headers is None:
        tag = snapshot.variant_etag(encoding).encode()
        headers = [(b"etag", tag), (b"x-snapshot-generation", b"%d" % snapshot.generation), _VARY]
        headers.append(_cache_control(max_age))
        if status != 304:  # 304: no body, and no Content-Length that would not be the body's
            headers.insert(0, _JSON)
            if encoding is not None:
                headers.append((b"content-encoding", encoding.encode()))
            headers.append((b"content-length", b"%d" % length))
        snapshot.answer_headers[key] = headers
    return list(headers)
