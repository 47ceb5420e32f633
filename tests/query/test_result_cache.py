from __future__ import annotations

from service.query.result_cache import ResultCache, content_etag, derived_etag
from service.snapshot.body import Rendered


def renderer(body: bytes, calls: list[bytes]) -> Rendered:
    calls.append(body)
    return Rendered.of(body, content_etag(body))


def test_the_same_key_is_rendered_once() -> None:
    cache = ResultCache(10, 1000)
    calls: list[bytes] = []
    first = cache.get_or_render("k", lambda: renderer(b"x", calls))
    second = cache.get_or_render("k", lambda: renderer(b"y", calls))
    assert first is second
    assert calls == [b"x"]
    assert (cache.hits, cache.misses) == (1, 1)


def test_least_recently_used_goes_first() -> None:
    cache = ResultCache(2, 1000)
    calls: list[bytes] = []
    cache.get_or_render("a", lambda: renderer(b"a", calls))
    cache.get_or_render("b", lambda: renderer(b"b", calls))
    cache.get_or_render("a", lambda: renderer(b"a", calls))  # a is now the most recent
    cache.get_or_render("c", lambda: renderer(b"c", calls))  # evicts b
    cache.get_or_render("a", lambda: renderer(b"a", calls))
    cache.get_or_render("b", lambda: renderer(b"b", calls))
    assert calls == [b"a", b"b", b"c", b"b"]
    assert cache.evictions == 2


def test_bounded_in_bytes_and_huge_answers_are_not_kept() -> None:
    cache = ResultCache(100, 10)
    calls: list[bytes] = []
    cache.get_or_render("a", lambda: renderer(b"123456", calls))
    cache.get_or_render("b", lambda: renderer(b"12345", calls))  # 11 bytes: a goes
    assert (len(cache), cache.stats()["bytes"]) == (1, 5)
    big = cache.get_or_render("big", lambda: renderer(b"x" * 11, calls))
    assert bytes(big.body) == b"x" * 11  # served...
    assert len(cache) == 1  # ...but not kept, and b was not pushed out for it
    cache.get_or_render("b", lambda: renderer(b"12345", calls))
    assert calls.count(b"12345") == 1


def test_size_zero_turns_it_off() -> None:
    cache = ResultCache(0, 1000)
    calls: list[bytes] = []
    for _ in range(3):
        cache.get_or_render("a", lambda: renderer(b"a", calls))
    assert (len(calls), len(cache)) == (3, 0)


def test_etags() -> None:
    assert derived_etag('"abc-3"', ("q", 1)) == derived_etag('"abc-3"', ("q", 1))
    assert derived_etag('"abc-3"', ("q", 1)) != derived_etag('"abc-4"', ("q", 1))
    assert derived_etag('"abc-3"', ("q", 1)) != derived_etag('"abc-3"', ("q", 2))
    tag = derived_etag('"abc-3"', "q")
    assert tag.startswith('"abc-3.') and tag.endswith('"') and tag.count('"') == 2
    assert content_etag(b"same") == content_etag(b"same") != content_etag(b"other")
