"""Many dashboards in a few processes of their own, so that the bench measures the service and not its client.

A thousand httpx streams in the bench's one process, each event decoded, lagged the events by hundreds of
milliseconds while the service sat at a quarter of its core. Here each process holds its share of the dashboards
on plain HTTP/1.1 connections and reads only what it measures: a stream's `changes` frames for the task ids they
carry (with the time each arrived, on the machine's monotonic clock, which every process shares), a poller's
answers for their sizes. Each process reports what it received between `start` and `stop` (monotonic times the
main process sets)."""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import time
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from typing import Any

_TASK_ID = re.compile(rb'"taskId":"([^"]*)"')


@dataclass
class Received:
    bytes: int = 0
    arrivals: list[tuple[str, float]] = field(default_factory=list)  # (task id, when a changes event carried it)
    polls_due: int = 0  # polls the pollers were to make in the window (one a second each)
    polls_answered: int = 0
    errors: int = 0


async def _request(port: int, path: str, headers: dict[str, str]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
    return reader, writer


async def _head(reader: asyncio.StreamReader) -> dict[bytes, bytes]:
    status = await reader.readline()
    if not status.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"not an HTTP answer: {status!r}")
    headers: dict[bytes, bytes] = {b":status": status.split()[1]}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return headers


async def _stream(port: int, path: str, out: Received, window: tuple[Any, Any]) -> None:
    start, stop = window
    reader, writer = await _request(port, path, {"Accept": "text/event-stream"})
    try:
        await _head(reader)
        buffer = b""
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)  # chunked transfer encoding
            if size == 0:
                return
            chunk = (await reader.readexactly(size + 2))[:-2]
            now = time.monotonic()
            if start.value and now >= start.value and not (stop.value and now >= stop.value):
                out.bytes += size
            buffer += chunk
            *frames, buffer = buffer.split(b"\n\n")
            if not start.value or now < start.value:
                continue
            for frame in frames:
                if frame.startswith(b"event: changes"):
                    out.arrivals.extend((task_id.decode(), now) for task_id in _TASK_ID.findall(frame))
    finally:
        writer.close()


async def _poll(port: int, path: str, out: Received, window: tuple[Any, Any]) -> None:
    start, stop = window
    reader, writer = await _request(port, path, {})
    etag = b""
    try:
        while True:
            began = time.monotonic()
            headers = await _head(reader)
            length = int(headers.get(b"content-length", b"0"))
            body = await reader.readexactly(length)
            etag = headers.get(b"etag", etag)
            now = time.monotonic()
            if start.value and start.value <= now and not (stop.value and now >= stop.value):
                out.bytes += length + sum(len(name) + len(value) + 4 for name, value in headers.items())
                out.polls_answered += 1
            del body
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: {etag.decode()}\r\n\r\n".encode())
    finally:
        writer.close()


async def _run(port: int, paths: list[str], streams: bool, start: Any, stop: Any, queue: Any) -> None:
    out = Received()
    worker = _stream if streams else _poll
    tasks = [asyncio.create_task(worker(port, path, out, (start, stop))) for path in paths]

    def failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            out.errors += 1

    for task in tasks:
        task.add_done_callback(failed)
    while not stop.value or time.monotonic() < stop.value:
        await asyncio.sleep(0.1)
    if not streams:
        out.polls_due = round((stop.value - start.value) * len(paths))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    queue.put(out)


def _process(port: int, paths: list[str], streams: bool, start: Any, stop: Any, queue: Any) -> None:
    asyncio.run(_run(port, paths, streams, start, stop, queue))


class Dashboards:
    """`paths` held by `processes` processes: streams (`streams=True`) or ETag pollers at one poll a second."""

    def __init__(self, port: int, paths: list[str], streams: bool, processes: int = 4) -> None:
        context = multiprocessing.get_context("spawn")
        self._start: Synchronized[float] = context.Value("d", 0.0)  # type: ignore[assignment]
        self._stop: Synchronized[float] = context.Value("d", 0.0)  # type: ignore[assignment]
        self._queue = context.Queue()
        shares = [paths[index::processes] for index in range(processes)]
        self._processes = [
            context.Process(target=_process, args=(port, share, streams, self._start, self._stop, self._queue))
            for share in shares
            if share
        ]
        for process in self._processes:
            process.start()

    def start(self) -> None:
        """Count from now on."""
        self._start.value = time.monotonic()

    def stop(self) -> Received:
        """Stop counting, end every dashboard and add up what they received."""
        self._stop.value = time.monotonic()
        total = Received()
        for _ in self._processes:
            part: Received = self._queue.get(timeout=120)
            total.bytes += part.bytes
            total.arrivals += part.arrivals
            total.polls_due += part.polls_due
            total.polls_answered += part.polls_answered
            total.errors += part.errors
        for process in self._processes:
            process.join(timeout=30)
        return total
