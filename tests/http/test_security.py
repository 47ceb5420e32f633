"""Access control over HTTP: bearer tokens (401), per-client limits (429), trusted proxies, CORS, the headers
every response carries, and secrets that never reach a response or a log line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import fakeredis
import httpx
import pytest
import redis
from starlette.applications import Starlette

from service.devtools.embedded import RedisServerProcess
from service.http.access_log import JsonFormatter, PlainFormatter
from service.http.app import create_app
from service.settings import settings_from_mapping

pytestmark = pytest.mark.anyio

RUNNING = "/codebase-embedder/api/v1/tasks/running"
STATS = "/codebase-embedder/api/v1/tasks/cache-stats"
TOKEN_A = "tok-A-0123456789abcdef"
TOKEN_B = "tok-B-0123456789abcdef"
WRONG = "tok-X-0123456789abcdef"
VALUE = b'{"process":"processing","totalProgress":10,"fileList":null}'
PROTECTED = (RUNNING, STATS, "/metrics", "/codebase-embedder/api/v1/tasks/nope")
UNAUTHORIZED = {"code": 401, "message": "未授权：缺少或无效的访问令牌", "success": False, "data": None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_app(**sections: Any) -> Starlette:
    client = fakeredis.FakeAsyncRedis()
    return create_app(settings_from_mapping(sections), redis=client)


@asynccontextmanager
async def serving(app: Starlette, peer: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, reached by a client whose connection comes from `peer`."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            yield http


@asynccontextmanager
async def as_peer(app: Starlette, peer: str) -> AsyncIterator[httpx.AsyncClient]:
    """Another connection to an app whose lifespan already runs."""
    transport = httpx.ASGITransport(app=app, client=(peer, 40001))
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
        yield http


# -- tokens ------------------------------------------------------------------------------------------------------


async def test_without_tokens_everything_is_open() -> None:
    async with serving(make_app()) as http:
        for path in (RUNNING, STATS, "/metrics", "/healthz", "/readyz", "/openapi.json"):
            assert (await http.get(path)).status_code == 200, path


async def test_with_tokens_the_api_and_metrics_need_one() -> None:
    async with serving(make_app(auth={"tokens": [TOKEN_A, TOKEN_B]})) as http:
        for path in PROTECTED:
            missing = await http.get(path)
            assert missing.status_code == 401, path
            assert missing.json() == UNAUTHORIZED
            assert missing.headers["www-authenticate"] == 'Bearer realm="running-tasks"'
            wrong = await http.get(path, headers=bearer(WRONG))
            assert wrong.status_code == 401
            assert wrong.headers["www-authenticate"] == 'Bearer realm="running-tasks", error="invalid_token"'
            basic = await http.get(path, headers={"Authorization": f"Basic {TOKEN_A}"})
            assert basic.status_code == 401
        for token in (TOKEN_A, TOKEN_B):
            for path in (RUNNING, STATS, "/metrics"):
                assert (await http.get(path, headers=bearer(token))).status_code == 200, path
        # behind the token, an unknown path is an ordinary 404: nothing is told before authentication
        assert (await http.get(PROTECTED[-1], headers=bearer(TOKEN_A))).status_code == 404


async def test_probes_and_the_contract_stay_open() -> None:
    async with serving(make_app(auth={"tokens": [TOKEN_A]})) as http:
        for path in ("/healthz", "/readyz", "/openapi.json"):
            response = await http.get(path)
            assert response.status_code == 200, path
            # a wrong token does not close them either
            assert (await http.get(path, headers=bearer(WRONG))).status_code == 200


async def test_tokens_never_appear_in_a_response() -> None:
    async with serving(make_app(auth={"tokens": [TOKEN_A, TOKEN_B]})) as http:
        responses = [await http.get(STATS, headers=bearer(TOKEN_A))]
        responses += [await http.get(path, headers=bearer(WRONG)) for path in PROTECTED]
        responses.append(await http.get("/metrics", headers=bearer(TOKEN_B)))
        responses.append(await http.get("/openapi.json"))
    assert responses[0].json()["data"]["settings"]["auth"]["tokens"] == ["***", "***"]
    for response in responses:
        text = response.text + str(response.headers)
        assert TOKEN_A not in text and TOKEN_B not in text and WRONG not in text


# -- limits ------------------------------------------------------------------------------------------------------


async def test_over_the_limit_is_429_with_retry_after() -> None:
    app = make_app(rate_limit={"requests_per_second": 0.5, "burst": 3})
    async with serving(app) as http:
        statuses = [(await http.get(RUNNING)).status_code for _ in range(3)]
        limited = await http.get(STATS)
        assert statuses == [200, 200, 200]
        assert limited.status_code == 429
        assert limited.json() == {"code": 429, "message": "请求过于频繁，请稍后再试", "success": False, "data": None}
        assert limited.headers["retry-after"] == "2"  # one token every 2 s
        for _ in range(5):  # probes are never limited
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
        async with as_peer(app, "127.0.0.2") as other:  # another address, another bucket
            assert (await other.get(RUNNING)).status_code == 200


async def test_zero_turns_the_limit_off() -> None:
    app = make_app(rate_limit={"requests_per_second": 0, "burst": 1})
    assert app.state.limiter is None
    async with serving(app) as http:
        statuses = {(await http.get(RUNNING)).status_code for _ in range(100)}
    assert statuses == {200}


async def test_the_limit_follows_the_token_when_there_is_one() -> None:
    app = make_app(auth={"tokens": [TOKEN_A, TOKEN_B]}, rate_limit={"requests_per_second": 0.1, "burst": 2})
    async with serving(app) as http:
        assert [(await http.get(RUNNING, headers=bearer(TOKEN_A))).status_code for _ in range(3)] == [200, 200, 429]
        # same address, other token: its own bucket
        assert (await http.get(RUNNING, headers=bearer(TOKEN_B))).status_code == 200
        # the same token from another address shares the first bucket
        async with as_peer(app, "192.0.2.10") as other:
            assert (await other.get(RUNNING, headers=bearer(TOKEN_A))).status_code == 429
        # wrong tokens are limited by address, so guessing is limited too
        guesses = [(await http.get(RUNNING, headers=bearer(f"{WRONG}{i}"))).status_code for i in range(3)]
    assert guesses == [401, 401, 429]


async def test_the_limit_keeps_bounded_memory() -> None:
    app = make_app(
        rate_limit={"requests_per_second": 1, "burst": 1, "max_clients": 50},
        server={"trusted_proxies": ["127.0.0.1"]},
    )
    async with serving(app) as http:
        for i in range(300):
            await http.get("/openapi.json", headers={"X-Forwarded-For": f"198.51.100.{i % 250}, 10.0.{i}.1"})
        metrics = (await http.get("/metrics", headers={"X-Forwarded-For": "203.0.113.1"})).text
    assert len(app.state.limiter) == 50
    assert "running_tasks_rate_limit_clients 50.0" in metrics


# -- trusted proxies ---------------------------------------------------------------------------------------------


async def test_forwarded_for_is_believed_only_from_trusted_proxies(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(rate_limit={"requests_per_second": 0.1, "burst": 1}, server={"trusted_proxies": ["10.0.0.0/8"]})
    with caplog.at_level(logging.INFO, logger="service.access"):
        async with serving(app, peer="10.1.2.3") as proxy:
            # through the trusted proxy: each forwarded client has its own bucket
            first = await proxy.get(RUNNING, headers={"X-Forwarded-For": "203.0.113.7"})
            second = await proxy.get(RUNNING, headers={"X-Forwarded-For": "203.0.113.8"})
            again = await proxy.get(RUNNING, headers={"X-Forwarded-For": "203.0.113.7"})
            # a client cannot pick its own address: the right-most untrusted hop is the client
            spoofed = await proxy.get(RUNNING, headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.8"})
            async with as_peer(app, "192.0.2.50") as direct:
                # not a trusted proxy: its X-Forwarded-For is ignored, the connection's address counts
                direct_first = await direct.get(RUNNING, headers={"X-Forwarded-For": "198.51.100.2"})
                direct_second = await direct.get(RUNNING, headers={"X-Forwarded-For": "198.51.100.3"})
    assert [first.status_code, second.status_code, again.status_code] == [200, 200, 429]
    assert spoofed.status_code == 429
    assert [direct_first.status_code, direct_second.status_code] == [200, 429]
    clients = [r.fields["client"] for r in caplog.records if hasattr(r, "fields")]  # type: ignore[attr-defined]
    assert clients == ["203.0.113.7", "203.0.113.8", "203.0.113.7", "203.0.113.8", "192.0.2.50", "192.0.2.50"]


async def test_without_trusted_proxies_forwarded_for_is_ignored() -> None:
    app = make_app(rate_limit={"requests_per_second": 0.1, "burst": 1})
    async with serving(app) as http:
        a = await http.get(RUNNING, headers={"X-Forwarded-For": "203.0.113.7"})
        b = await http.get(RUNNING, headers={"X-Forwarded-For": "203.0.113.8"})
    assert (a.status_code, b.status_code) == (200, 429)


# -- CORS and headers --------------------------------------------------------------------------------------------


async def test_cors_for_configured_origins_even_with_tokens() -> None:
    origin = "https://dash.example.com"
    app = make_app(auth={"tokens": [TOKEN_A]}, cors={"allowed_origins": [origin], "max_age": 120})
    async with serving(app) as http:
        preflight = await http.options(
            RUNNING,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, if-none-match",
            },
        )
        actual = await http.get(RUNNING, headers={"Origin": origin, **bearer(TOKEN_A)})
        other = await http.get(RUNNING, headers={"Origin": "https://evil.example.net", **bearer(TOKEN_A)})
    assert preflight.status_code == 200  # browsers send no Authorization on a preflight
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert preflight.headers["access-control-max-age"] == "120"
    assert actual.headers["access-control-allow-origin"] == origin
    assert "etag" in actual.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-origin" not in other.headers


async def test_no_cors_headers_unless_configured() -> None:
    async with serving(make_app()) as http:
        response = await http.get(RUNNING, headers={"Origin": "https://dash.example.com"})
    assert "access-control-allow-origin" not in response.headers


async def test_every_response_says_nosniff() -> None:
    app = make_app(auth={"tokens": [TOKEN_A]}, rate_limit={"requests_per_second": 0.1, "burst": 4})
    async with serving(app) as http:
        ok = await http.get(RUNNING, headers=bearer(TOKEN_A))
        responses = [
            ok,
            await http.get(RUNNING, headers={**bearer(TOKEN_A), "If-None-Match": ok.headers["etag"]}),  # 304
            await http.post(RUNNING, headers=bearer(TOKEN_A)),  # 405
            await http.get(RUNNING),  # 401
            await http.get("/healthz"),
            await http.get("/nope", headers=bearer(TOKEN_A)),  # 404
            await http.get(RUNNING, headers=bearer(TOKEN_A)),  # 429
        ]
    assert [r.status_code for r in responses] == [200, 304, 405, 401, 200, 404, 429]
    assert all(r.headers["x-content-type-options"] == "nosniff" for r in responses)


async def test_an_unhandled_error_is_the_500_envelope_without_detail(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()

    def broken_stats() -> None:
        raise RuntimeError("internal detail: /srv/secret/path.py line 42")

    async with serving(app) as http:
        app.state.refresher.snapshot_info = broken_stats
        with caplog.at_level(logging.ERROR, logger="service"):
            response = await http.get(STATS, headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json() == {"code": 500, "message": "查询任务状态时发生内部错误", "success": False, "data": None}
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-request-id"] == "req-500"
    assert "internal detail" not in response.text and "Traceback" not in response.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # the detail is in the log, once
    assert "req-500" in PlainFormatter().format(errors[0])


# -- secrets in logs ---------------------------------------------------------------------------------------------


@pytest.mark.real_redis
async def test_no_token_or_redis_password_in_any_log_line(caplog: pytest.LogCaptureFixture) -> None:
    password = "redis-pass-0123456789"
    wrong_password = "wrong-pass-0123456789"
    server = RedisServerProcess()
    try:
        with redis.Redis.from_url(server.url) as client:
            client.set("request:id:a", VALUE, ex=3600)
            client.config_set("requirepass", password)
        caplog.set_level(logging.DEBUG)
        for url_password in (wrong_password, password):
            settings = settings_from_mapping(
                {
                    "redis": {"url": f"redis://:{url_password}@127.0.0.1:{server.port}/0"},
                    "running_tasks": {"redis_timeout": 500, "cache_enabled": url_password == password},
                    "auth": {"tokens": [TOKEN_A, TOKEN_B]},
                }
            )
            app = create_app(settings)
            async with serving(app) as http:
                await http.get(RUNNING, headers=bearer(TOKEN_A))
                await http.get(RUNNING, headers=bearer(WRONG))
                await http.get(f"{RUNNING}?access_token={TOKEN_B}", headers=bearer(TOKEN_B))
                await http.get(STATS, headers=bearer(TOKEN_B))
                await http.get("/readyz")
                if url_password == password:
                    server.kill()  # and now Redis goes away: failures are logged
                    await app.state.refresher.run_job()
    finally:
        server.close()
    assert any("refresh failed" in r.getMessage() for r in caplog.records)  # failures were logged...
    assert any(r.name == "service.access" for r in caplog.records)
    # every record of the process but the test client's own (httpx logs the URLs it requests)
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    lines = [formatter.format(record) for record in records for formatter in (PlainFormatter(), JsonFormatter())]
    for line in lines:  # ...and no line, in either format, holds a secret
        for secret in (TOKEN_A, TOKEN_B, WRONG, password, wrong_password):
            assert secret not in line, line


async def test_a_fleet_of_dashboards_behind_one_address_is_never_refused_by_default() -> None:
    # the shipped defaults: no rate limit (issue 15, item 4); 1,000 dashboards behind one NAT share one address
    app = make_app()
    assert app.state.limiter is None
    async with serving(app, peer="203.0.113.7") as http:
        first = await http.get(RUNNING)
        etag = first.headers["etag"]
        answers = [(await http.get(RUNNING, headers={"If-None-Match": etag})).status_code for _ in range(2000)]
    assert first.status_code == 200
    assert set(answers) == {304}
