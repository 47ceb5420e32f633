"""Conditional, compressed and cacheable reads of the running list, in process against fakeredis."""

from __future__ import annotations

import dataclasses
import gzip
import time
from typing import Any

import fakeredis
import httpx
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from service.http.app import create_app
from service.http.delivery import Answer, Delivery, etag_matches
from service.http.middleware import PollShortcut
from service.settings import settings_from_mapping
from service.snapshot.snapshot import build_snapshot
from service.source.scanner import ScanStats
from tests.conftest import make_settings, running_app

RUNNING = "/codebase-embedder/api/v1/tasks/running"
pytestmark = pytest.mark.anyio


def value(progress: int, files: int = 30) -> bytes:
    entries = [{"path": f"src/f{i}.go", "status": "pending", "operate": "add"} for i in range(files)]
    return orjson.dumps({"process": "processing", "totalProgress": progress, "fileList": entries})


async def seeded() -> fakeredis.FakeAsyncRedis:
    client = fakeredis.FakeAsyncRedis()
    for i in range(20):
        await client.set(f"request:id:t{i}", value(i), ex=3600)
    return client


async def test_gzip_read_has_its_own_etag_and_the_same_data() -> None:
    client = await seeded()
    async with running_app(create_app(make_settings(refresh_interval=30), redis=client)) as http:
        plain = await http.get(RUNNING, headers={"Accept-Encoding": "identity"})
        packed = await http.get(RUNNING, headers={"Accept-Encoding": "gzip"})
        raw = await http.get(RUNNING, headers={"Accept-Encoding": "gzip"}, extensions={})
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.content == plain.content  # httpx decodes it
    assert int(raw.headers["content-length"]) < len(plain.content)
    assert packed.headers["etag"] == plain.headers["etag"][:-1] + '-gzip"'
    for response in (plain, packed):
        assert response.headers["vary"] == "Accept-Encoding"
        assert response.headers["content-type"] == "application/json"


async def test_gzip_body_is_compressed_once_per_snapshot() -> None:
    client = await seeded()
    app = create_app(make_settings(refresh_interval=30), redis=client)
    async with running_app(app) as http:
        refresher = app.state.refresher
        for _ in range(3):
            await http.get(RUNNING, headers={"Accept-Encoding": "gzip"})
        body = refresher.snapshot.body
        variant = await body.encoded("gzip")
        assert variant is await body.encoded("gzip")  # the one made for the first request
        await refresher.run_job()  # nothing changed: same body, variant kept
        assert refresher.snapshot.body is body
        await client.set("request:id:t3", value(50), ex=3600)
        await refresher.run_job()
        assert refresher.snapshot.body is not body
        assert not refresher.snapshot.body.is_encoded("gzip")  # made lazily, on the first demand
        fresh = await http.get(RUNNING, headers={"Accept-Encoding": "gzip"})
    assert fresh.json()["data"]["totalTasks"] == 20
    assert gzip.decompress(bytes(await refresher.snapshot.body.encoded("gzip"))) == bytes(refresher.snapshot.body)


async def test_not_modified_for_either_variant_with_cache_headers() -> None:
    client = await seeded()
    async with running_app(create_app(make_settings(refresh_interval=30), redis=client)) as http:
        plain = await http.get(RUNNING)
        packed = await http.get(RUNNING, headers={"Accept-Encoding": "gzip"})
        for etag in (plain.headers["etag"], packed.headers["etag"], "W/" + plain.headers["etag"], "*"):
            again = await http.get(RUNNING, headers={"If-None-Match": etag, "Accept-Encoding": "gzip"})
            assert (again.status_code, again.content) == (304, b""), etag
            assert again.headers["etag"] == packed.headers["etag"]
            assert again.headers["cache-control"].startswith("max-age=")
        other = await http.get(RUNNING, headers={"If-None-Match": plain.headers["etag"][:-1] + '0"'})
    assert other.status_code == 200
    assert 0 <= int(plain.headers["cache-control"].removeprefix("max-age=")) <= 30


async def test_live_scans_are_not_cacheable() -> None:
    client = await seeded()
    async with running_app(create_app(make_settings(cache_enabled=False), redis=client)) as http:
        response = await http.get(RUNNING)
    assert response.headers["cache-control"] == "no-cache"


def request(**headers: str) -> Scope:
    """The scope of a GET with these headers (names with _ for -), as Delivery.ready reads it."""
    raw = [(name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()]
    return {"type": "http", "method": "GET", "path": RUNNING, "query_string": b"", "headers": raw}


def ready(delivery: Delivery, snapshot: Any, live: bool = False, **headers: str) -> Answer | None:
    return delivery.ready(request(**headers), snapshot.rendered, snapshot, live)


async def test_cache_control_counts_down_to_the_next_refresh() -> None:
    snapshot = await build_snapshot(1, [], ScanStats(), 0, None, "abcd")
    delivery = Delivery(10)

    def cache_control(age: float, live: bool = False) -> bytes:
        aged = dataclasses.replace(snapshot, built_monotonic=time.monotonic() - age)
        answer = ready(delivery, aged, live)
        assert answer is not None
        return dict(answer.headers)[b"cache-control"]

    assert cache_control(0.5) == b"max-age=9"  # whole seconds, never more
    assert cache_control(4.5) == b"max-age=5"
    assert cache_control(60) == b"max-age=0"
    assert cache_control(0.5, live=True) == b"no-cache"


async def test_etag_matching() -> None:
    snapshot = await build_snapshot(7, [], ScanStats(), 0, None, "abcd")
    etag = snapshot.etag
    assert etag == '"abcd-7"'
    assert etag_matches(etag, '"abcd-7"')
    assert etag_matches(etag, '"zz", "abcd-7-gzip"')
    assert etag_matches(etag, 'W/"abcd-7"')
    assert etag_matches(etag, "*")
    assert not etag_matches(etag, '"abcd-70"')
    assert not etag_matches(etag, '"abcd-7-"')
    assert not etag_matches(etag, '"abcd-6"')
    assert not etag_matches(etag, None)
    assert not etag_matches(etag, "")


@pytest.mark.parametrize("rate_limit", [20, 0], ids=["checks-between", "nothing-between"])
async def test_a_poll_and_a_query_that_changes_nothing_get_the_same_answer(rate_limit: int) -> None:
    # Polls are answered before routing (by PollShortcut, or by the bookkeeping layer itself when no check
    # stands between it and the routes); a query string takes the query API's way.
    client = await seeded()
    settings = settings_from_mapping(
        {"running_tasks": {"refresh_interval": 30}, "rate_limit": {"requests_per_second": rate_limit}}
    )
    app = create_app(settings, redis=client)
    bookkeeping = app.user_middleware[0]
    assert (bookkeeping.kwargs["polls"] is None) == bool(rate_limit)  # it answers polls itself when it can
    counters = app.state.endpoints.delivery.counters
    async with running_app(app) as http:
        first = await http.get(RUNNING)
        cases: list[dict[str, str]] = [
            {},
            {"Accept-Encoding": "gzip"},
            {"If-None-Match": first.headers["etag"]},
            {"If-None-Match": first.headers["etag"], "Accept-Encoding": "gzip"},
        ]
        for headers in cases:
            poll = await http.get(RUNNING, headers=headers)
            query = await http.get(f"{RUNNING}?unknownParameter=1", headers=headers)
            head = await http.head(RUNNING, headers=headers)
            assert poll.status_code == query.status_code == head.status_code, headers
            assert poll.content == query.content and head.content == b"", headers
            for response in (query, head):
                assert _comparable(response.headers) == _comparable(poll.headers), headers
                assert response.headers["cache-control"].startswith("max-age="), headers
        assert counters.served_from_snapshot == 1 + 3 * len(cases)  # each request counted once
        assert counters.not_modified == 3 * 2
        metrics = (await http.get("/metrics")).text
        assert f'route="{RUNNING}",status="304"' in metrics and 'route="unmatched"' not in metrics


def _comparable(headers: httpx.Headers) -> list[tuple[str, str]]:
    # a new id per request; max-age counts down by whole seconds, and a second may end between two requests
    return [(k, v) for k, v in headers.multi_items() if k not in ("x-request-id", "cache-control")]


async def test_answers_carry_exact_lengths_and_are_the_request_s_own_headers() -> None:
    client = await seeded()
    app = create_app(make_settings(refresh_interval=30), redis=client)
    async with running_app(app):
        snapshot = app.state.refresher.snapshot
        delivery = app.state.endpoints.delivery
        await snapshot.body.encoded("gzip")
        plain = ready(delivery, snapshot)
        packed = ready(delivery, snapshot, accept_encoding="gzip")
        assert plain is not None and packed is not None
        for answer in (plain, packed):
            assert dict(answer.headers)[b"content-length"] == b"%d" % sum(len(chunk) for chunk in answer.chunks)
        assert dict(packed.headers)[b"content-encoding"] == b"gzip"
        not_modified = ready(delivery, snapshot, if_none_match=snapshot.etag)
        assert not_modified is not None and not_modified.chunks == ()
        assert b"content-length" not in dict(not_modified.headers)
        plain.headers.append((b"x-added-by", b"middleware"))  # what CORS or our bookkeeping may do
        again = ready(delivery, snapshot)
        assert again is not None and (b"x-added-by", b"middleware") not in again.headers


async def test_a_compressed_variant_not_yet_made_is_not_ready() -> None:
    client = await seeded()
    app = create_app(make_settings(refresh_interval=30), redis=client)
    async with running_app(app):
        snapshot = app.state.refresher.snapshot
        delivery = app.state.endpoints.delivery
        assert ready(delivery, snapshot, accept_encoding="gzip") is None
        assert ready(delivery, snapshot, accept_encoding="gzip", if_none_match=snapshot.etag) is not None  # a 304
        await snapshot.body.encoded("gzip")
        assert ready(delivery, snapshot, accept_encoding="gzip") is not None


async def test_polls_of_a_fresh_snapshot_are_answered_before_routing() -> None:
    client = await seeded()
    app = create_app(make_settings(refresh_interval=30), redis=client)
    passed_on: list[str] = []

    async def routes(scope: Scope, receive: Receive, send: Send) -> None:
        passed_on.append(f"{scope['type']} {scope.get('method')} {scope.get('path')}?{scope.get('query_string')!r}")

    async with running_app(app) as http:
        refresher = app.state.refresher
        shortcut = PollShortcut(routes, polls=app.state.endpoints.running)
        etag = (await http.get(RUNNING)).headers["etag"]

        async def call(method: str = "GET", path: str = RUNNING, **scope: Any) -> list[Message]:
            sent: list[Message] = []

            async def send(message: Message) -> None:
                sent.append(message)

            async def receive() -> Message:
                return {"type": "http.request", "body": b""}

            headers = scope.pop("headers", [])
            full = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": headers, **scope}
            await shortcut(full, receive, send)
            return sent

        answered = [
            await call(),
            await call("HEAD"),
            await call(headers=[(b"if-none-match", etag.encode())]),
        ]
        assert [messages[0]["status"] for messages in answered] == [200, 200, 304]
        assert answered[1][1:] == [{"type": "http.response.body", "body": b""}]  # HEAD: no body
        assert passed_on == []
        # made by the first request for it (httpx asks for gzip); one not made yet goes to the route, which makes
        # it (test_a_compressed_variant_not_yet_made_is_not_ready)
        packed = await call(headers=[(b"accept-encoding", b"gzip")])
        assert dict(packed[0]["headers"])[b"content-encoding"] == b"gzip"
        assert passed_on == []

        await call(query_string=b"pageSize=5")
        await call("POST")
        await call(path=RUNNING + "/t1")
        await call(root_path="/prefix", path="/prefix" + RUNNING)  # the router knows what the path means there
        await shortcut({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
        refresher.snapshot = dataclasses.replace(refresher.snapshot, built_monotonic=-1000.0)  # stale: a live scan
        await call()
        assert len(passed_on) == 6
        assert passed_on[-2:] == ["lifespan None None?None", f"http GET {RUNNING}?b''"]
