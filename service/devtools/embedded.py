"""A Redis of our own on a free loopback port: a real `redis-server` when one is installed, else fakeredis' TCP
server. Used by the demo, the tests and the benchmarks; never touches a Redis on the default port."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

logger = logging.getLogger("service.devtools.embedded")


class EmbeddedRedis(Protocol):
    url: str
    kind: str

    def close(self) -> None: ...


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # NOAUTH: up, with a password
    except OSError:
        return False


class RedisServerProcess:
    """A `redis-server` child process on a free port with a temporary directory, no persistence."""

    kind = "redis-server"

    def __init__(
        self,
        port: int | None = None,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        config: str | None = None,
    ) -> None:
        """`config`: a configuration file's text, written to the server's directory and given first (a Sentinel's
        must be a file it can rewrite)."""
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = found
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._extra_args = extra_args
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        self._config: list[str] = []
        if config is not None:
            file = Path(self._dir.name) / "redis.conf"
            file.write_text(config)
            self._config = [str(file)]
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self.start()
        except BaseException:  # a signal while starting, too: no server and no directory left behind
            self.close()
            raise

    def start(self, timeout: float = 10.0) -> None:
        """Start (or start again, on the same port) and wait until it answers PING."""
        if self._process is not None and self._process.poll() is None:
            return
        args = [
            self.binary,
            *self._config,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        args += ["--dir", self._dir.name, "--logfile", str(Path(self._dir.name) / "redis.log"), *self._extra_args]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        try:
            while not _answers_ping(self.port):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    @property
    def directory(self) -> Path:
        """The server's working directory (its log is `redis.log` there)."""
        return Path(self._dir.name)

    @property
    def pid(self) -> int:
        """The server's process id (0 when it is not running)."""
        return self._process.pid if self._process is not None and self._process.poll() is None else 0

    def kill(self) -> None:
        """Die at once, as a crashed server would: no goodbye to connected clients."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def pause(self) -> None:
        """Stop answering (SIGSTOP) while keeping connections open: a hung server."""
        if self._process is not None:
            self._process.send_signal(19)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(18)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self.resume()
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


class FakeRedisServer:
    """fakeredis' Redis-protocol TCP server in a background thread: a Redis for machines without one."""

    kind = "fakeredis"

    def __init__(self, port: int | None = None) -> None:
        from fakeredis import TcpFakeServer  # imported here: only the fallback needs it

        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._server = TcpFakeServer(("127.0.0.1", self.port))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakeredis", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_embedded(kind: str = "auto") -> EmbeddedRedis:
    """`redis-server`, `fakeredis`, or `auto`: a real redis-server when one is installed, else fakeredis' server."""
    if kind == "redis-server" or (kind == "auto" and shutil.which("redis-server")):
        return RedisServerProcess()
    return FakeRedisServer()
