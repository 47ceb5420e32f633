"""Credentials and addresses as operators give them, against a real redis-server: an ACL user (`user:password@`)
with only the commands the README lists, a wrong password and a user denied a command (one line naming the
setting, never a traceback), and a unix socket."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from service.devtools.embedded import RedisServerProcess
from service.http.app import create_app
from tests.conftest import make_settings, require_binaries, running_app

pytestmark = [pytest.mark.real_redis, pytest.mark.anyio]
API = "/codebase-embedder/api/v1/tasks"
USER, PASSWORD = "running-tasks", "s3cret-for-tests"
# The README's list ("An ACL user for the service"): the scan and the reads, then the change feed, then the SWAPDB
# watch. Nothing else: a command missing here that the service sends fails these tests.
COMMANDS = (
    "+ping +evalsha +script|load +scan +time +pexpiretime +pttl +strlen +get +mget "
    "+client|id +client|tracking +subscribe "
    "+info"
)


def value(progress: int) -> bytes:
    return orjson.dumps({"process": "processing", "totalProgress": progress, "fileList": None})


def add_user(port: int, commands: str) -> None:
    with redis.Redis(port=port) as admin:
        rules = ["on", f">{PASSWORD}", "resetkeys", "~request:id:*", "resetchannels", "&__redis__:invalidate", "-@all"]
        admin.acl_setuser(USER, reset=True)
        admin.execute_command("ACL", "SETUSER", USER, *rules, *commands.split())


@pytest.fixture
def acl_server() -> Iterator[RedisServerProcess]:
    require_binaries("redis-server")
    server = RedisServerProcess()
    with redis.Redis(port=server.port) as admin:
        for number in range(3):
            admin.set(f"request:id:acl-{number}", value(number), ex=3600)
    yield server
    server.close()


def user_url(server: RedisServerProcess, password: str = PASSWORD) -> str:
    return f"redis://{USER}:{password}@127.0.0.1:{server.port}/0"


async def test_an_acl_user_with_the_listed_commands_scans_and_follows(acl_server: RedisServerProcess) -> None:
    add_user(acl_server.port, COMMANDS)
    app = create_app(make_settings(url=user_url(acl_server), change_feed="on", refresh_interval=0.2))
    async with running_app(app) as http:
        answer = await http.get(f"{API}/running")
        assert answer.status_code == 200
        assert sorted(task["taskId"] for task in answer.json()["data"]["tasks"]) == ["acl-0", "acl-1", "acl-2"]
        with redis.Redis(port=acl_server.port) as producer:
            producer.set("request:id:acl-new", value(9), ex=3600)
        for _ in range(100):
            stats = (await http.get(f"{API}/cache-stats")).json()["data"]
            if stats["changeFeed"]["batches"]:
                break
            await _pause()
        assert stats["changeFeed"]["state"] == "live"
        assert stats["lastRefresh"]["error"] is None
        tasks = (await http.get(f"{API}/running")).json()["data"]["tasks"]
        assert "acl-new" in {task["taskId"] for task in tasks}
        with redis.Redis(port=acl_server.port) as admin:  # what the user was denied: nothing
            denied = [entry for entry in admin.acl_log() if entry.get("username") == USER]
        assert denied == []


async def test_a_wrong_password_is_one_line_naming_the_url(
    acl_server: RedisServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    add_user(acl_server.port, COMMANDS)
    caplog.set_level(logging.DEBUG)
    app = create_app(make_settings(url=user_url(acl_server, "not-the-password"), redis_timeout=1000))
    async with running_app(app) as http:
        answer = await http.get(f"{API}/running")
        stats = (await http.get(f"{API}/cache-stats")).json()["data"]
    assert answer.status_code == 503
    error = stats["lastRefresh"]["error"]
    assert "Redis refused the user or password of redis.url" in error
    assert "not-the-password" not in error and "\n" not in error
    assert not [record for record in caplog.records if record.exc_info and record.name.startswith("service")]
    assert "not-the-password" not in caplog.text


async def test_a_user_denied_a_command_is_told_which_setting(
    acl_server: RedisServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    add_user(acl_server.port, COMMANDS.replace("+mget ", ""))
    caplog.set_level(logging.DEBUG)
    app = create_app(make_settings(url=user_url(acl_server), change_feed="off"))
    async with running_app(app) as http:
        answer = await http.get(f"{API}/running")
        stats = (await http.get(f"{API}/cache-stats")).json()["data"]
    assert answer.status_code == 503
    error = stats["lastRefresh"]["error"]
    assert "the ACL user of redis.url may not run a command the service needs" in error and "mget" in error
    assert not [record for record in caplog.records if record.exc_info and record.name.startswith("service")]


def test_the_scan_command_says_a_refused_password_in_one_line(acl_server: RedisServerProcess) -> None:
    add_user(acl_server.port, COMMANDS)
    scanned = subprocess.run(
        [sys.executable, "-m", "service", "scan", "--redis-url", user_url(acl_server, "wrong-one")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert scanned.returncode == 1
    assert len(scanned.stderr.strip().splitlines()) == 1, scanned.stderr
    assert "refused the user or password of redis.url" in scanned.stderr
    assert "wrong-one" not in scanned.stderr


async def test_a_unix_socket() -> None:
    require_binaries("redis-server")
    directory = Path(tempfile.mkdtemp(prefix="rt-sock-"))  # short: a socket's path is at most 107 bytes
    socket = directory / "redis.sock"
    server = RedisServerProcess(extra_args=("--unixsocket", str(socket), "--unixsocketperm", "700"))
    try:
        with redis.Redis(unix_socket_path=str(socket)) as producer:
            producer.set("request:id:over-socket", value(3), ex=3600)
        app = create_app(make_settings(url=f"unix://{socket}?db=0"))
        async with running_app(app) as http:
            answer = await http.get(f"{API}/running")
            stats = (await http.get(f"{API}/cache-stats")).json()["data"]
        assert [task["taskId"] for task in answer.json()["data"]["tasks"]] == ["over-socket"]
        assert stats["redis"]["nodes"][0]["node"] == str(socket)
        assert stats["redis"]["nodes"][0]["keys"] == 1
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.05)
