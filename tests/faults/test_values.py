"""Bad data in a real Redis: whatever one value holds, however large, deep or strange, it is skipped and counted,
and the scan goes on (issue 15, item 1)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis

from service.http.app import create_app
from tests.conftest import make_settings, running_app

RUNNING = "/codebase-embedder/api/v1/tasks/running"
STATS = "/codebase-embedder/api/v1/tasks/cache-stats"
pytestmark = [pytest.mark.anyio, pytest.mark.real_redis]

GOOD = b'{"process":"processing","totalProgress":10,"fileList":null}'
DEEP = 1000  # levels of nesting: the value that made every refresh fail


def nested(levels: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * levels + closer * levels


HOSTILE = {
    # nested arrays and objects where the decoder reads a field, skips an unknown one, or expects an object
    "deep-file-list": b'{"process":"processing","totalProgress":1,"fileList":' + nested(DEEP) + b"}",
    "deep-unknown-field": b'{"process":"processing","totalProgress":1,"extra":' + nested(DEEP) + b"}",
    "deep-objects": b'{"process":"processing","extra":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
    "very-deep": b'{"process":"processing","extra":' + nested(200_000) + b"}",
    "deep-top-level": nested(DEEP),
    "deep-unclosed": b"[" * 100_000,
    "huge-number": b'{"process":"processing","totalProgress":' + b"9" * 5000 + b"}",
    "huge-string-field": b'{"process":"processing","totalProgress":"' + b"p" * 5_000_000 + b'"}',
    "nul-bytes": b"\x00" * 1000,
    "lone-surrogate": b'{"process":"processing","clientId":"\\ud800","totalProgress":1}',
    "float-progress": b'{"process":"processing","totalProgress":1e400}',
    "bad-time-types": b'{"process":"processing","totalProgress":1,"startTime":[1],"lastUpdateTime":{"a":1}}',
}


async def test_one_hostile_value_never_fails_a_refresh(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("request:id:ok", GOOD, ex=3600)
        for name, value in HOSTILE.items():
            client.set(f"request:id:{name}", value, ex=3600)
    # periodic scans: the change feed's batches meet the same values in tests/snapshot/test_follower.py
    app = create_app(make_settings(url=redis_url, refresh_interval=0.2, change_feed="off"))
    async with running_app(app) as http:
        body = (await http.get(RUNNING)).json()
        stats = (await http.get(STATS)).json()["data"]
        ready = await http.get("/readyz")
        await asyncio.sleep(0.5)  # the job's refreshes too
        again = (await http.get(STATS)).json()["data"]
    assert [task["taskId"] for task in body["data"]["tasks"]] == ["ok"]
    assert stats["lastRefresh"]["error"] is None
    assert stats["lastRefresh"]["malformed"] == len(HOSTILE)
    assert ready.status_code == 200
    assert again["counters"]["refreshesFailed"] == 0
    assert again["counters"]["refreshesOk"] > stats["counters"]["refreshesOk"]


async def test_a_hostile_value_written_while_running_is_counted_and_the_rest_still_served(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("request:id:ok", GOOD, ex=3600)
    app = create_app(make_settings(url=redis_url, refresh_interval=60))
    async with running_app(app) as http:
        refresher = app.state.refresher
        with redis.Redis.from_url(redis_url) as client:
            client.set("request:id:deep", HOSTILE["deep-unknown-field"], ex=3600)
            client.set("request:id:later", orjson.dumps({"process": "pending", "totalProgress": 0}), ex=3600)
        await refresher.refresh("job")
        body = (await http.get(RUNNING)).json()
    assert sorted(task["taskId"] for task in body["data"]["tasks"]) == ["later", "ok"]
    assert refresher.last_refresh.stats["malformed"] == 1
