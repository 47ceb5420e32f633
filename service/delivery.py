"""How a snapshot is sent: ETag and 304, the compressed variant, and the cache headers pollers go by."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

from starlette.responses import Response

from service.body import BodyResponse, choose_encoding
from service.snapshot import Snapshot

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


def cache_control(snapshot: Snapshot, refresh_interval: float, live: bool) -> tuple[bytes, bytes]:
    """`max-age` = the time left until the next refresh is due: pollers need not ask before then."""
    if live:
        return _LIVE
    left = max(0, math.floor(refresh_interval - snapshot.age()))
    return (b"cache-control", b"max-age=%d" % left)


# Pollers repeat the same few header values; a cached answer keeps the per-request work near none.
_encoding = functools.lru_cache(maxsize=64)(choose_encoding)


@functools.lru_cache(maxsize=16)
def _tags(etag: str, generation: int, encoding: str | None) -> tuple[tuple[bytes, bytes], ...]:
    tag = etag if encoding is None else f'{etag[:-1]}-{encoding}"'
    return (b"etag", tag.encode()), (b"x-snapshot-generation", b"%d" % generation), _VARY


async def snapshot_response(
    snapshot: Snapshot,
    *,
    live: bool,
    refresh_interval: float,
    if_none_match: str | None,
    accept_encoding: str | None,
) -> tuple[Response, bool]:
    """The response to a read of `snapshot`, and whether it is a 304."""
    # a small body gains nothing from compression (gzip's own header and trailer make a tiny one larger)
    encoding = _encoding(accept_encoding) if snapshot.body.length >= MIN_COMPRESS_BYTES else None
    headers = [*_tags(snapshot.etag, snapshot.generation, encoding), cache_control(snapshot, refresh_interval, live)]
    if not live and etag_matches(snapshot, if_none_match):
        return BodyResponse(None, headers, status_code=304), True
    body = snapshot.body
    if encoding is not None:
        body = await body.encoded(encoding)
        headers.append((b"content-encoding", encoding.encode()))
    return BodyResponse(body, [_JSON, *headers]), False
