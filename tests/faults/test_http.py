"""Hostile clients against a real `python -m service serve`, with raw sockets: huge request heads, heads that
never end, connections that send nothing, and the keep-alive clients that must not notice any of it."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from service.devtools.embedded import free_port
from service.settings import ServerSettings

pytestmark = pytest.mark.real_redis

ROOT = Path(__file__).resolve().parents[2]
RUNNING = "/codebase-embedder/api/v1/tasks/running"
VALUE = b'{"process":"processing","totalProgress":10,"fileList":null}'
CAP = ServerSettings().max_header_bytes
GET = b"GET /healthz HTTP/1.1\r\nHost: service\r\n\r\n"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    up: bool = False

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log_lines(self, marker: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if marker in line]


@pytest.fixture
def serve(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `python -m service serve` with these options on a free loopback port; stopped after the test."""
    with redis.Redis.from_url(redis_url) as client:
        for i in range(3):
            client.set(f"request:id:t{i}", VALUE, ex=3600)
    settings = tmp_path / "settings.toml"
    settings.write_text('[server]\nlog_level = "debug"\n')  # one debug line per refusal
    started: list[Server] = []

    def start(*options: str) -> Server:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(port), "--settings", str(settings), *options],
                cwd=ROOT,
                env={**os.environ, "REDIS_URL": redis_url},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        server = Server(process, port, log)
        started.append(server)
        deadline = time.monotonic() + 20
        while True:
            try:
                with server.connect(timeout=2) as sock:
                    sock.sendall(GET)
                    if read_response(sock)[0] == 200:
                        server.up = True
                        return server
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

    yield start
    for server in started:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
            raise
        if server.up:  # (one that did not start failed the test already)
            assert "Traceback" not in server.log.read_text(), server.log.read_text()


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """`count` responses (status, headers, body), each with a Content-Length body, and nothing more."""
    data = b""
    responses = []
    while len(responses) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed in a body"
            data += chunk
        responses.append((int(status_line.split()[1]), headers, data[:length]))
        data = data[length:]
    assert data == b"", "more responses than requests"
    return responses


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    (response,) = read_responses(sock, 1)
    return response


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset after data counts as closed)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def parse(data: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert len(body) == int(headers["content-length"])
    return int(status_line.split()[1]), headers, json.loads(body)


def assert_refusal(data: bytes, status: int) -> None:
    """A refusal in the service's envelope, and the connection closed."""
    code, headers, body = parse(data)
    assert code == status
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert body["code"] == status and body["success"] is False and body["data"] is None
    assert isinstance(body["message"], str) and body["message"]


@dataclass
class Attack:
    response: bytes
    seconds: float  # from the first byte sent to the server's close
    sent: int  # bytes the client got to send before the server closed


def huge_head(server: Server, size: int) -> Attack:
    """A request whose one header is `size` bytes, sent as fast as the server takes it; one thread sends, this one
    reads what the server answers."""
    sock = server.connect()
    sent = 0

    def send() -> None:
        nonlocal sent
        block = b"a" * (1 << 20)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: service\r\nCookie: ")
            for _ in range(size // len(block)):
                sock.sendall(block)
                sent += len(block)
            sock.sendall(b"\r\n\r\n")
        except OSError:  # the server closed: broken pipe, reset
            pass

    sender = threading.Thread(target=send)
    started = time.monotonic()
    sender.start()
    try:
        response = read_until_closed(sock)
        seconds = time.monotonic() - started
        sender.join(timeout=30)
        assert not sender.is_alive()
    finally:
        sock.close()
    return Attack(response, seconds, sent)


def refusals(server: Server, pattern: str) -> list[re.Match[str]]:
    deadline = time.monotonic() + 5
    while True:  # the log line is written as the refusal is sent: it may trail the client's read by a moment
        found = [m for line in server.log_lines("service.http.server") if (m := re.search(pattern, line))]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_1mb_header_gets_431_at_once_and_is_not_read(serve: Callable[..., Server]) -> None:
    server = serve()
    attack = huge_head(server, 1 << 20)
    assert_refusal(attack.response, 431)
    assert attack.seconds < 1.0  # a few ms here; before, uvicorn read it all and answered 200
    (refusal,) = refusals(server, r"431: request head over (\d+) bytes \((\d+) read\)")
    assert int(refusal[1]) == CAP
    assert int(refusal[2]) <= CAP  # not 1 MB: the parser got no more than the cap
    assert "Cookie" not in server.log.read_text() and "aaaa" not in server.log.read_text()
    with server.connect() as sock:  # and the server is fine
        sock.sendall(GET)
        assert read_response(sock)[0] == 200
    # a chunked body's trailers are parsed like headers: the same cap (the request had its answer, or will not)
    with server.connect() as sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: service\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ")
        try:
            sock.sendall(b"t" * (1 << 20))
        except OSError:
            pass
        started = time.monotonic()
        read_until_closed(sock)
        assert time.monotonic() - started < 1.0
    (trailers,) = refusals(server, r"431: trailers over \d+ bytes \((\d+) read\)")
    assert int(trailers[1]) <= CAP


def test_a_body_trickled_after_the_answer_does_not_hold_the_connection(serve: Callable[..., Server]) -> None:
    server = serve("--header-timeout", "1")
    with server.connect() as sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: service\r\nContent-Length: 1000000\r\n\r\nab")
        assert read_response(sock)[0] == 405  # answered at once; no route reads a body
        answered = time.monotonic()
        closed = False
        while time.monotonic() - answered < 5:  # one byte every 0.2 s: each would stop the keep-alive timer
            if select.select([sock], [], [], 0.2)[0]:
                closed = read_until_closed(sock) == b""
                break
            try:
                sock.sendall(b"x")
            except OSError:
                closed = True
                break
        seconds = time.monotonic() - answered
    assert closed
    assert 0.9 < seconds < 3.0
    assert refusals(server, r"closed: body of an answered request not complete 1 s later")


def test_a_64mb_header_is_refused_while_other_clients_are_served(serve: Callable[..., Server]) -> None:
    server = serve()
    latencies: list[float] = []
    statuses: list[int] = []
    stop = threading.Event()

    def other_client() -> None:  # a dashboard polling on its keep-alive connection, and a new one each time
        with server.connect() as kept:
            while not stop.is_set():
                for sock in (kept, server.connect()):
                    started = time.monotonic()
                    sock.sendall(GET)
                    statuses.append(read_response(sock)[0])
                    latencies.append(time.monotonic() - started)
                    if sock is not kept:
                        sock.close()
                time.sleep(0.02)

    poller = threading.Thread(target=other_client)
    poller.start()
    try:
        time.sleep(0.2)
        attacks = [huge_head(server, 64 << 20) for _ in range(3)]
        time.sleep(0.2)
    finally:
        stop.set()
        poller.join(timeout=30)
    assert not poller.is_alive()
    for attack in attacks:
        assert_refusal(attack.response, 431)
        assert attack.seconds < 1.0  # before: 200 after 6.1 s
        assert attack.sent < 32 << 20  # the rest was never taken: the server closed (kernel buffers hold a few MB)
    assert all(int(m[2]) <= CAP for m in refusals(server, r"431: request head over (\d+) bytes \((\d+) read\)"))
    assert len(refusals(server, r"431: ")) == 3
    # the other client was answered all along, promptly (before: one answer took 4.3 s)
    assert len(statuses) >= 10 and set(statuses) == {200}
    assert max(latencies) < 1.0


def test_half_a_request_line_gets_408_after_the_header_timeout(serve: Callable[..., Server]) -> None:
    server = serve("--header-timeout", "1")
    payload = b"GET /healthz HTTP/1.1\r\nHost: service\r\nX-Slow: " + b"a" * 100
    with server.connect() as stalled, server.connect() as trickling:
        started = time.monotonic()
        stalled.sendall(b"GET /heal")
        # the other sends a byte every 0.2 s: bytes that keep coming do not move the head's deadline
        for trickled in range(len(payload)):
            if select.select([trickling], [], [], 0.2)[0]:  # answered
                break
            trickling.sendall(payload[trickled : trickled + 1])
        response = read_until_closed(trickling)
        trickle_seconds = time.monotonic() - started
        stalled_response = read_until_closed(stalled)
        stalled_seconds = time.monotonic() - started
    assert_refusal(stalled_response, 408)
    assert_refusal(response, 408)
    assert 0.9 < stalled_seconds < 3.0
    assert 0.9 < trickle_seconds < 3.0
    assert 3 <= trickled < 25
    assert len(refusals(server, r"408: request head not complete 1 s after its first byte")) == 2


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(serve: Callable[..., Server]) -> None:
    server = serve("--header-timeout", "1")
    with server.connect() as idle:
        started = time.monotonic()
        assert read_until_closed(idle) == b""  # closed without an answer: there was no request to answer
        seconds = time.monotonic() - started
    assert 0.9 < seconds < 3.0
    assert refusals(server, r"closed: no request within 1 s")


def test_keep_alive_and_pipelining_clients_are_unaffected(serve: Callable[..., Server]) -> None:
    server = serve("--header-timeout", "1", "--keep-alive-timeout", "2")
    running = f"GET {RUNNING} HTTP/1.1\r\nHost: service\r\n\r\n".encode()
    big_cookie = b"GET /healthz HTTP/1.1\r\nHost: service\r\nCookie: " + b"c" * (CAP - 200) + b"\r\n\r\n"
    with server.connect() as sock:
        started = time.monotonic()
        # one connection, requests 0.3 s apart: together longer than the header timeout, which is per request
        for request in (GET, running, big_cookie, GET, running, GET):
            sock.sendall(request)
            status, headers, body = read_response(sock)
            assert status == 200, body
            assert "connection" not in headers  # kept alive
            if request is running:
                assert json.loads(body)["data"]["totalTasks"] == 3
            time.sleep(0.3)
        assert time.monotonic() - started > 1.5
        # pipelined: three requests in one write, three answers in order
        sock.sendall(GET + running + GET)
        assert [status for status, _, _ in read_responses(sock, 3)] == [200, 200, 200]
        # a head split over several writes, each well within the deadline
        for part in (b"GET /hea", b"lthz HTTP/1.1\r\n", b"Host: service\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(0.1)
        assert read_response(sock)[0] == 200
        # a chunked body with trailers, in pieces, finished after its answer (405: no route takes a body)
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: service\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert read_response(sock)[0] == 405
        for part in (b"5\r\nhello\r\n", b"0\r\nX-Trailer: ", b"t\r\n\r\n"):
            time.sleep(0.1)
            sock.sendall(part)
        sock.sendall(GET)
        assert read_response(sock)[0] == 200
        # idle: uvicorn's keep-alive timeout (2 s) closes it, not the header timeout (1 s)
        idle_from = time.monotonic()
        assert read_until_closed(sock) == b""
        idle = time.monotonic() - idle_from
    assert 1.5 < idle < 4.0
    assert server.log_lines("service.http.server") == []  # nothing refused


def test_slow_connections_are_all_closed_by_the_deadline_and_hold_no_descriptors(
    serve: Callable[..., Server],
) -> None:
    server = serve("--header-timeout", "1", "--max-connections", "80")
    baseline = server.fds()
    slow = [server.connect() for _ in range(50)]
    idle = [server.connect() for _ in range(50)]
    started = time.monotonic()
    for sock in slow:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ser")
    try:
        deadline = time.monotonic() + 5
        while server.fds() < baseline + 90:  # (-10: the start-up probe's socket may still have been open)
            assert time.monotonic() < deadline, "the server did not accept the connections"
            time.sleep(0.05)
        # meanwhile the connection limit (80) is reached: uvicorn answers 503 ...
        with server.connect() as probe:
            probe.sendall(GET)
            assert read_response(probe)[0] == 503
        answers = [read_until_closed(sock) for sock in slow]
        nothing = [read_until_closed(sock) for sock in idle]
        closed_after = time.monotonic() - started
    finally:
        for sock in slow + idle:
            sock.close()
    for answer in answers:
        assert_refusal(answer, 408)
    assert nothing == [b""] * 50
    assert closed_after < 3.0  # all of them, by the 1 s deadline (before: open after 30 s)
    # ... and once they are gone, answers again; the server holds no descriptor for them
    with server.connect() as sock:
        sock.sendall(GET)
        assert read_response(sock)[0] == 200
    deadline = time.monotonic() + 5
    while server.fds() > baseline + 2:  # (+2: the Redis pool may have grown meanwhile)
        assert time.monotonic() < deadline, (server.fds(), baseline)
        time.sleep(0.05)
    assert len(refusals(server, r"408: ")) == 50
    assert len(refusals(server, r"closed: no request")) == 50


def test_serve_documents_its_limits() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for option in ("--max-header-bytes", "--header-timeout", "--keep-alive-timeout", "--max-connections"):
        assert option in result.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--header-timeout", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: invalid server limits: header_timeout = 0.0: must be a finite number > 0"


@pytest.mark.parametrize(
    ("hard", "soft_after", "max_connections"),
    [(20_000, 8192 + 128, 8192), (4_000, 4_000, 4_000 - 128)],
    ids=["soft-limit-raised", "connections-lowered-to-the-hard-limit"],
)
def test_the_connection_limit_fits_the_file_descriptor_limit(hard: int, soft_after: int, max_connections: int) -> None:
    """`serve` raises a soft RLIMIT_NOFILE of 1024 for its connections, or lowers max_connections to fit."""
    import resource

    # the child lowers its own limits (a process may always lower them) before the service raises the soft one
    hard = min(hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    soft_after, max_connections = min(soft_after, hard), min(max_connections, hard - 128)
    code = (
        "import resource; from service.http.server import ServerLimits, fit_to_fd_limit; "
        "from service.settings import ServerSettings; "
        "limits = fit_to_fd_limit(ServerLimits.from_settings(ServerSettings())); "
        "print(limits.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(max_connections), str(soft_after)]
