"""Child processes of the bench: uvicorn servers on free ports, wrk (or the Python fallback), the Redis probe."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.devtools.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
# On a machine with two cores or more, the server under test gets one core and the load generators another, so
# that the two sides of a comparison do not take turns at random with each other (wrk runs were +-30 % apart).
_PIN = len(os.sched_getaffinity(0)) >= 2
SERVER_CPU, LOAD_CPU = sorted(os.sched_getaffinity(0))[-1], sorted(os.sched_getaffinity(0))[0]


class Server:
    """`uvicorn --factory <factory>` on a free loopback port, one worker, no access log."""

    def __init__(self, factory: str, env: dict[str, str], ready_path: str, timeout: float = 600) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE__")}
        full_env.update(env)
        full_env["PYTHONPATH"] = str(ROOT)
        args = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "60"]
        if full_env.get("BENCH_TRACE_STALLS"):  # the tracer hooks asyncio's handles; uvloop has its own
            args += ["--loop", "asyncio"]
        self.process = subprocess.Popen(args, env=full_env, cwd=ROOT)
        if _PIN:
            os.sched_setaffinity(self.process.pid, {SERVER_CPU})
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{factory} exited with {self.process.returncode} before it answered")
            try:
                with urllib.request.urlopen(self.base + ready_path, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{factory} did not answer {ready_path} within {timeout} s")
            time.sleep(0.1)

    def url(self, path: str) -> str:
        return self.base + path

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path)[2])

    def rss_bytes(self) -> int:
        return rss_bytes(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (/proc/PID/stat: utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ready(port: int) -> bool:
    """Whether a service on this loopback port answers 200 on /readyz (its first scan done)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


RUNNING_PATH = "/codebase-embedder/api/v1/tasks/running"


def whole_list(port: int) -> tuple[int, float]:
    """GET the whole running list once (no compression), its bytes read and discarded: (bytes, seconds). The
    body of a large list is joined as it is first sent, and kept: what a poller of the whole list costs."""
    started = time.perf_counter()
    size = 0
    request = urllib.request.Request(f"http://127.0.0.1:{port}{RUNNING_PATH}", headers={"Accept-Encoding": "identity"})
    with urllib.request.urlopen(request, timeout=600) as response:
        while chunk := response.read(1 << 20):
            size += len(chunk)
    return size, time.perf_counter() - started


def rss_bytes(pid: int) -> int:
    """A process's resident set now (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def service_env(redis_url: str, **running_tasks: object) -> dict[str, str]:
    # The load comes from one address: a per-client rate limit would answer it with 429s, which is not what is
    # measured. Every other setting (access log, metrics, auth off) is the shipped default.
    env = {"REDIS_URL": redis_url, "SERVICE__RATE_LIMIT__REQUESTS_PER_SECOND": "0"}
    for key, value in running_tasks.items():
        env[f"SERVICE__RUNNING_TASKS__{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@dataclass
class Load:
    rps: float
    requests: int
    errors: int
    tool: str


def has_wrk() -> bool:
    return shutil.which("wrk") is not None


def closed_loop(url: str, duration: float, connections: int = 32, headers: dict[str, str] | None = None) -> Load:
    """Requests per second with `connections` keep-alive connections: wrk when installed, else bench.loadgen."""
    header_args = [f"{k}: {v}" for k, v in (headers or {}).items()]
    if has_wrk():
        # One wrk thread: the server under test gets the other core.
        args = [*_load_cpu(), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "60s"]
        for header in header_args:
            args += ["-H", header]
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True, timeout=duration + 120).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors += int(non2xx.group(1)) if non2xx else 0
        return Load(rps, requests, errors, "wrk")
    args = [*_load_cpu(), sys.executable, "-m", "bench.loadgen", "closed", url, "--connections", str(connections)]
    args += ["--duration", str(duration)]
    for header in header_args:
        args += ["--header", header]
    result = json.loads(_run(args, duration))
    return Load(result["rps"], result["requests"], result["errors"], "python")


def fixed_rate(url: str, rate: float, duration: float) -> dict[str, Any]:
    args = [*_load_cpu(), sys.executable, "-m", "bench.loadgen", "rate", url, "--rate", str(rate)]
    args += ["--duration", str(duration)]
    result: dict[str, Any] = json.loads(_run([*args, "--track-etag"], duration))
    return result


def redis_probe(redis_url: str, duration: float) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.redisprobe", redis_url, "--duration", str(duration)]
    result: dict[str, Any] = json.loads(_run(args, duration))
    return result


def start_redis_probe(redis_url: str, duration: float) -> subprocess.Popen[str]:
    args = [*_load_cpu(), sys.executable, "-m", "bench.redisprobe", redis_url, "--duration", str(duration)]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )


_ALL_CPUS = set(os.sched_getaffinity(0))


def pin(pid: int, side: str) -> None:
    """Pin a process (0: this one) to the server core or the load core, where there are two; "any": unpin."""
    if _PIN:
        os.sched_setaffinity(pid, _ALL_CPUS if side == "any" else {SERVER_CPU if side == "server" else LOAD_CPU})


def _load_cpu() -> list[str]:
    return ["taskset", "-c", str(LOAD_CPU)] if _PIN and shutil.which("taskset") else []


def _run(args: list[str], duration: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        args, capture_output=True, text=True, check=True, timeout=duration + 120, cwd=ROOT, env=env
    ).stdout
