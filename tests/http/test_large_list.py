"""A whole running list past 1 MB, served by a real service from a real Redis while the producer writes: its
segments are joined as they are first sent and its sends gathered, so every answer is checked whole (valid JSON,
the length it announced, every task once) while batches replace the snapshot under it."""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from tests.conftest import start_serve, stop_serve

pytestmark = pytest.mark.real_redis

RUNNING = "/codebase-embedder/api/v1/tasks/running"
TASKS = 6000  # some 500 bytes each as served: about 3 MB, well past ONE_CHUNK_BYTES


def _value(task: int, progress: int) -> bytes:
    files = [
        {"path": f"src/pkg{task % 97}/module_{task}_{i}.go", "status": "pending", "operate": "add"} for i in range(4)
    ]
    return orjson.dumps({"process": "processing", "totalProgress": progress, "fileList": files})


def test_the_whole_list_is_whole_while_the_producer_writes(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    with client.pipeline(transaction=False) as pipe:
        for task in range(TASKS):
            pipe.set(f"request:id:task-{task:05d}", _value(task, 1), ex=3600)
        pipe.execute()
    process, base, log = start_serve(
        redis_url,
        tmp_path,
        "[running_tasks]\nrefresh_interval = 0.5\nproducer_key_ttl = 0\n"
        f'change_feed = "{os.environ.get("TEST_CHANGE_FEED", "auto")}"\n',
    )
    stop = threading.Event()

    def produce() -> None:  # rewrites progress, as the embedder does, until the reads are done
        with redis.Redis.from_url(redis_url) as producer:
            progress = 1
            while not stop.is_set():
                progress = progress % 99 + 1
                for task in range(0, TASKS, 37):
                    producer.set(f"request:id:task-{task:05d}", _value(task, progress), ex=3600)

    writer = threading.Thread(target=produce)
    writer.start()
    try:
        etags = set()
        with httpx.Client(base_url=base, timeout=60) as http:
            for number in range(12):
                gzipped = number % 3 == 2
                headers = {"Accept-Encoding": "gzip" if gzipped else "identity"}
                with http.stream("GET", RUNNING, headers=headers) as answer:
                    raw = b"".join(answer.iter_raw())
                assert answer.status_code == 200
                assert int(answer.headers["content-length"]) == len(raw)  # announced before anything was joined
                assert answer.headers.get("content-encoding") == ("gzip" if gzipped else None)
                body = gzip.decompress(raw) if gzipped else raw
                assert len(body) > 1024 * 1024
                data = orjson.loads(body)["data"]
                ids = [task["taskId"] for task in data["tasks"]]
                assert data["totalTasks"] == len(ids) == len(set(ids)) == TASKS
                assert all(1 <= task["totalProgress"] <= 100 for task in data["tasks"])
                etags.add(answer.headers["etag"])
                again = http.get(RUNNING, headers={"If-None-Match": answer.headers["etag"]})
                assert again.status_code in (200, 304)  # 304 unless a batch replaced the snapshot meanwhile
        assert len(etags) > 1  # the reads met more than one snapshot
    finally:
        stop.set()
        writer.join()
        stop_serve(process)
        client.close()
    assert "Traceback" not in log.read_text(), log.read_text()
