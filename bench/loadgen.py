"""HTTP load from a process of its own, over raw keep-alive sockets: a closed loop (N connections, as fast as
they go: the fallback when `wrk` is missing) and an open loop at a fixed rate (the latency under a steady load).

python -m bench.loadgen closed URL --connections 32 --duration 5 [--header 'If-None-Match: "x"']
python -m bench.loadgen rate URL --rate 200 --duration 10 [--track-etag]
Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes, skip_body_of_200: bool = False) -> tuple[int, dict[str, str], float]:
        """Send one request; return the status, the headers and the seconds until the headers arrived.

        The body is read and discarded; with `skip_body_of_200` the connection of a 200 is closed after its
        headers instead, as a poller that only wanted to know whether anything changed."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        assert self.reader is not None
        started = time.perf_counter()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        first_byte = time.perf_counter() - started
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        remaining = int(headers.get("content-length", "0"))
        if skip_body_of_200 and status == 200 and remaining:
            self.close()
            return status, headers, first_byte
        while remaining > 0:
            data = await self.reader.read(min(remaining, 1 << 20))
            if not data:
                raise ConnectionError("connection closed mid-body")
            remaining -= len(data)
        return status, headers, first_byte

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _raw(url: str, headers: list[str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", *headers, "", ""]
    return parts.hostname or "127.0.0.1", parts.port or 80, "\r\n".join(lines).encode()


async def closed(url: str, connections: int, duration: float, headers: list[str]) -> dict[str, object]:
    host, port, raw = _raw(url, headers)
    deadline = time.perf_counter() + duration
    counts = {"requests": 0, "errors": 0}
    statuses: dict[str, int] = {}

    async def client() -> None:
        conn = _Connection(host, port)
        while time.perf_counter() < deadline:
            try:
                status, _, _ = await conn.request(raw)
                counts["requests"] += 1
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            except (OSError, ValueError, asyncio.IncompleteReadError):
                counts["errors"] += 1
                conn = _Connection(host, port)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    rps = counts["requests"] / elapsed
    return {"requests": counts["requests"], "errors": counts["errors"], "rps": rps, "statuses": statuses}


async def rate(url: str, per_second: float, duration: float, track_etag: bool) -> dict[str, object]:
    """Requests started on a fixed schedule (not waiting for earlier answers), each on a free connection.

    With --track-etag every request carries the newest ETag seen, as a poller does; a 200 (the snapshot
    changed) is timed to its headers and its body not read (its connection is closed): reading hundreds of
    megabytes is the network's time, not the server's, and 200 of them a second no network carries."""
    host, port, _ = _raw(url, [])
    idle: list[_Connection] = []
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    etag: list[str] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        conn = idle.pop() if idle else _Connection(host, port)
        headers = [f"If-None-Match: {etag[0]}"] if track_etag and etag else []
        _, _, raw = _raw(url, headers)
        started = time.perf_counter()
        try:
            status, response_headers, first_byte = await conn.request(raw, skip_body_of_200=track_etag)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            errors += 1
            return
        latencies.append(first_byte if status == 200 and track_etag else time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1
        if "etag" in response_headers:
            etag[:] = [response_headers["etag"]]
        if conn.writer is not None:
            idle.append(conn)

    tasks: list[asyncio.Task[None]] = []
    interval = 1 / per_second
    started = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) < started + duration:
        due = started + n * interval
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(one()))
        n += 1
    await asyncio.gather(*tasks)
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else 0.0

    return {
        "requests": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else 0.0,
        "achieved_rps": len(latencies) / (time.perf_counter() - started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("mode", choices=("closed", "rate"))
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--track-etag", action="store_true")
    args = parser.parse_args()
    if args.mode == "closed":
        result = asyncio.run(closed(args.url, args.connections, args.duration, args.header))
    else:
        result = asyncio.run(rate(args.url, args.rate, args.duration, args.track_etag))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
