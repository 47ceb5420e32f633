"""The commands, run as a user runs them: `python -m service ...` in a subprocess."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from service.devtools.embedded import free_port
from service.devtools.simulator import Simulator, build_workload
from service.http.app import create_app
from tests.conftest import first_answer, make_settings, running_app

ROOT = Path(__file__).resolve().parent.parent
RUNNING = "/codebase-embedder/api/v1/tasks/running"


def service(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_newer_producer_tasks(url: str) -> None:
    """Tasks whose times come from the producer, so any two readers render them identically."""

    async def main() -> None:
        async with aioredis.Redis.from_url(url) as client:
            simulator = Simulator(7, newer_producer_fraction=1.0)
            tasks = [simulator.new_task() for _ in range(25)]
            for task in tasks[:10]:
                while simulator.advance(task):  # some finish
                    pass
            await simulator.write(client, tasks, now_ms=1_795_000_000_000)
            await simulator.write_anomalies(client)

    asyncio.run(main())


@pytest.mark.real_redis
def test_scan_json_is_exactly_the_endpoint_body(redis_url: str) -> None:
    write_newer_producer_tasks(redis_url)
    result = service("scan", "--redis-url", redis_url, "--json", "--batch-size", "7", "--workers", "3")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # silent when not on a terminal

    async def endpoint() -> bytes:
        async with running_app(create_app(make_settings(url=redis_url))) as http:
            return (await http.get(RUNNING)).content

    body = asyncio.run(endpoint())
    assert result.stdout.encode() == body + b"\n"
    assert orjson.loads(body)["data"]["totalTasks"] > 0


@pytest.mark.real_redis
def test_scan_table(redis_url: str) -> None:
    write_newer_producer_tasks(redis_url)
    body = orjson.loads(service("scan", "--redis-url", redis_url, "--json").stdout)
    result = service("scan", "--redis-url", redis_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TASK", "CLIENT", "STATUS", "PROGRESS", "STARTED", "LAST", "UPDATE", "ETA", "FILES"]
    tasks = body["data"]["tasks"]
    assert len(lines) == len(tasks) + 2  # header, one line per task, summary
    for line, task in zip(lines[1:], tasks, strict=False):
        cells = line.split()
        assert cells[0] == task["taskId"]
        assert cells[1] == (task["clientId"] or "-")
        assert cells[2] == task["process"]
        assert cells[3] == f"{task['totalProgress']}%"
        assert cells[4] == task["startTime"]
        assert cells[-1] == str(len(task["fileList"]))
    assert lines[-1].startswith(f"{len(tasks)} running of ")
    assert "malformed" in lines[-1]


def test_scan_of_an_unreachable_redis_fails_in_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = service("scan", "--redis-url", url, env={"SERVICE__RUNNING_TASKS__REDIS_TIMEOUT": "1000"})
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach Redis at {url}: ")


def test_bad_settings_stop_a_command_in_one_line() -> None:
    result = service("scan", "--batch-size", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: invalid settings: running_tasks.scan_batch_size = '0': must be >= 1"


@pytest.mark.real_redis
def test_scan_shows_progress_on_a_terminal(redis_url: str) -> None:
    async def fill() -> None:
        async with aioredis.Redis.from_url(redis_url) as client:
            await build_workload(client, tasks=20_000, unrelated=0, large_fraction=0, now_ms=1_795_000_000_000)

    asyncio.run(fill())
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "scan", "--redis-url", redis_url, "--batch-size", "10", "--workers", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    assert b"scanning: " in output
    assert b" keys, " in output and b" pages, " in output and b" keys/s" in output


def test_every_command_documents_every_option() -> None:
    expected = {
        "serve": ["--host", "--port", "--settings"],
        "scan": ["--redis-url", "--pattern", "--batch-size", "--workers", "--json", "--max-scan-time", "--quiet"],
        "demo": ["--host", "--port", "--tasks", "--seed", "--redis", "--cluster"],
        "simulate": ["--redis-url", "--tasks", "--files", "--seed", "--interval", "--duration", "--anomalies"],
    }
    for command, options in expected.items():
        result = service(command, "--help")
        assert result.returncode == 0
        for option in options:
            assert option in result.stdout, (command, option)
    assert all(command in service("--help").stdout for command in expected)


@pytest.mark.real_redis
def test_simulate_writes_producer_data(redis_url: str) -> None:
    result = service(
        "simulate", "--redis-url", redis_url, "--tasks", "5", "--files", "30", "--interval", "0.2", "--duration", "1.5"
    )
    assert result.returncode == 0, result.stderr
    with redis.Redis.from_url(redis_url) as client:
        keys = [k.decode() for k in client.scan_iter(match="request:id:*")]
        assert len(keys) >= 5
        values = [orjson.loads(client.get(k)) for k in keys]
        assert all(list(v)[:3] == ["process", "totalProgress", "fileList"] for v in values)
        assert all(len(v["fileList"]) == 30 for v in values)
        assert max(v["totalProgress"] for v in values) > 0  # tasks moved
        assert all(0 < client.ttl(k) <= 3600 for k in keys)


def test_simulate_against_an_unreachable_redis_fails_in_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = service("simulate", "--redis-url", url, "--duration", "1")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach Redis at {url}")


def _wait_for_line(process: subprocess.Popen[str], prefix: str, timeout: float = 30) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no line starting with {prefix!r}: {lines}")


DEMO_READY = "Ctrl-C (or SIGTERM, SIGHUP) stops everything."  # the banner's last line


def _start_demo(port: int, kind: str) -> subprocess.Popen[str]:
    """`kind`: the --redis option, or "cluster" for --cluster."""
    redis = ["--cluster"] if kind == "cluster" else ["--redis", kind]
    return subprocess.Popen(
        [sys.executable, "-m", "service", "demo", "--port", str(port), *redis],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("kind", ["fakeredis", "redis-server", "cluster"])
def test_demo_serves_moving_tasks_and_stops_on_ctrl_c(kind: str) -> None:
    if kind != "fakeredis" and not os.environ.get("REQUIRE_REAL_REDIS") and not _has_redis_server():
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = _start_demo(port, kind)
    try:
        lines = _wait_for_line(process, DEMO_READY)
        shown = "redis-server cluster" if kind == "cluster" else kind
        assert lines[0] == f"dashboard: http://127.0.0.1:{port}/"  # the dashboard's URL first
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        assert lines[1].startswith(f"demo: embedded Redis ({shown}) at redis://127.0.0.1:")
        url = f"http://127.0.0.1:{port}{RUNNING}"
        assert any(url in line for line in lines)
        first = httpx.get(url, timeout=10).json()
        assert first["data"]["totalTasks"] > 0
        progress = {t["taskId"]: t["totalProgress"] for t in first["data"]["tasks"]}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.5)
            later = httpx.get(url, timeout=10).json()
            moved = {t["taskId"] for t in later["data"]["tasks"] if progress.get(t["taskId"], -1) != t["totalProgress"]}
            if moved:
                break
        assert moved, "no task changed between two requests"
        # the banner's shell command works as printed, from anywhere, with no venv activated
        (shell,) = [line.split("from a shell", 1)[1].strip() for line in lines if "from a shell" in line]
        env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
        command = shlex.split(shell)
        while "=" in command[0]:  # VARIABLE=value before the command, as a shell takes it
            name, _, setting = command.pop(0).partition("=")
            env[name] = setting
        scanned = subprocess.run(command, cwd="/", env=env, capture_output=True, text=True, timeout=60)
        assert scanned.returncode == 0, scanned.stderr
        assert " running of " in scanned.stdout
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.strip().endswith("demo stopped.")
    assert "Traceback" not in err


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.real_redis
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_demo_leaves_nothing_behind_on_sigterm_and_sighup(signum: signal.Signals) -> None:
    if not os.environ.get("REQUIRE_REAL_REDIS") and not _has_redis_server():
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = _start_demo(port, "redis-server")
    try:
        lines = _wait_for_line(process, DEMO_READY)
        (redis_pid,) = _children(process.pid)
        directory = Path(f"/proc/{redis_pid}/cwd").readlink()  # redis-server works in its --dir
        assert directory.name.startswith("redis-test-")
        assert directory.is_dir()
        redis_url = re.search(r"redis://\S+", lines[1])
        assert redis_url is not None
        assert httpx.get(f"http://127.0.0.1:{port}{RUNNING}", timeout=10).status_code == 200
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out.strip().endswith("demo stopped.")
    assert "Traceback" not in err
    assert _gone(redis_pid), "the demo's redis-server outlived it"
    assert not directory.exists(), "the demo's temporary directory outlived it"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url.group(0), socket_connect_timeout=1).ping()


def _has_redis_server() -> bool:
    import shutil

    return shutil.which("redis-server") is not None


@pytest.mark.real_redis
def test_serve_runs_the_service_until_interrupted(redis_url: str, tmp_path: Path) -> None:
    write_newer_producer_tasks(redis_url)
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[redis]\nurl = "{redis_url}"\n[running_tasks]\nrefresh_interval = 1\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), "--settings", str(settings)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A proxy's header from a peer that is not in server.trusted_proxies (none here): our middleware ignores it,
    # and so must uvicorn, which by default believes X-Forwarded-For from 127.0.0.1.
    spoofed = {"X-Forwarded-For": "203.0.113.9"}
    try:
        response = first_answer(process, f"{base}{RUNNING}", 20, headers={"X-Request-ID": "serve-0", **spoofed})
        assert response.status_code == 200
        assert response.json()["data"]["totalTasks"] > 0
        stats_path = "/codebase-embedder/api/v1/tasks/cache-stats"
        stats = httpx.get(f"{base}{stats_path}", headers={"X-Request-ID": "serve-1"}, timeout=2).json()
        assert stats["data"]["settings"]["redis"]["url"] == redis_url
        assert stats["data"]["job"]["intervalSeconds"] == 1
        missing = httpx.get(f"{base}/nope?x=1", headers={"X-Request-ID": "serve-2", **spoofed}, timeout=2)
        assert missing.status_code == 404
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert "Traceback" not in err
    lines = err.splitlines()
    # every line in our format (uvicorn's own included: its format was not put back) ...
    assert lines and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ [\w.]+: ", line) for line in lines), (
        err
    )
    assert any(" INFO uvicorn.error: Started server process" in line for line in lines)
    # ... and exactly one access line per request, ours, with the peer's own address
    access = [line for line in lines if " service.access: " in line]
    assert [line.rsplit("request_id=", 1)[1] for line in access] == ["serve-0", "serve-1", "serve-2"], err
    assert f'127.0.0.1 "GET {RUNNING}" 200 ' in access[0]
    assert f'127.0.0.1 "GET {stats_path}" 200 ' in access[1]
    assert '127.0.0.1 "GET /nope?x=***" 404 ' in access[2]  # a value the API does not know is not logged
    assert "203.0.113.9" not in err
