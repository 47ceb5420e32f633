"""The apps the bench runs under uvicorn (`--factory`): the service with an event-loop watch, and the bare
Starlette baseline that returns the same bytes the service sent, with no logic at all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.http.access_log import configure_logging
from service.http.app import create_app
from service.settings import load_settings

# The watch wakes up this often; how late it wakes is how long the loop was busy with something else.
_TICK = 0.002
BARE_PATHS = {"identity": "/bare", "gzip": "/bare-gzip", "not_modified": "/bare-304"}
# The same answers with the very headers the service sent (its ETag, cache headers, request id and the rest)
SAME_HEADERS_PATHS = {case: f"{path}-same-headers" for case, path in BARE_PATHS.items()}
# Headers the server or Starlette add to every response by themselves, and those of the connection (the bench's
# urllib asked the service to close it)
_ADDED_BY_THE_SERVER = frozenset({"date", "server", "content-length", "connection", "keep-alive", "transfer-encoding"})


class LoopWatch:
    """Longest and 99th-percentile lateness of a periodic wake-up: the event loop's stalls."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(_TICK)
            self.lateness.append(time.perf_counter() - before - _TICK)

    def take(self) -> dict[str, float]:
        samples, self.lateness = sorted(self.lateness), []
        if not samples:
            return {"samples": 0, "max_ms": 0.0, "p99_ms": 0.0}
        return {
            "samples": len(samples),
            "max_ms": samples[-1] * 1000,
            "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000,
        }


def _trace_stalls(threshold: float) -> None:
    """Log every event-loop step longer than `threshold` s with the coroutine and the line it stopped at."""
    import asyncio.events
    import sys

    run = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        started = time.perf_counter()
        run(handle)
        elapsed = time.perf_counter() - started
        if elapsed > threshold:
            callback = getattr(handle, "_callback", None)
            task = getattr(callback, "__self__", None)
            where = repr(callback)[:120]
            if isinstance(task, asyncio.Task):
                coro = task.get_coro()
                frame = getattr(coro, "cr_frame", None)
                where = f"{getattr(coro, '__qualname__', coro)} now at line {frame.f_lineno if frame else '?'}"
            print(f"stall {elapsed * 1000:.1f} ms: {where}", file=sys.stderr, flush=True)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]


def service_app() -> Starlette:
    """The service as configured by the environment, plus `/bench/loop` (take and reset the loop's stalls)."""
    settings = load_settings()
    # Logging as the Procfile sets it up, so that every request pays for its access line; the lines go to
    # $BENCH_SERVICE_LOG (default /dev/null: the cost of making and writing them, not of a disk).
    configure_logging(settings, open(os.environ.get("BENCH_SERVICE_LOG", os.devnull), "a"))
    # With refreshes back to back, APScheduler logs every tick that finds the last refresh still running.
    logging.getLogger("apscheduler.executors.default").setLevel(logging.ERROR)
    if os.environ.get("BENCH_TRACE_STALLS"):
        _trace_stalls(float(os.environ["BENCH_TRACE_STALLS"]))
    app = create_app(settings)
    watch = LoopWatch()
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Starlette) -> AsyncIterator[None]:
        async with inner(application):
            watch.start()
            try:
                yield
            finally:
                await watch.stop()

    async def loop_stats(request: Request) -> Response:
        refresher = app.state.refresher
        return JSONResponse(
            {
                "loop": watch.take(),
                "refreshes": refresher.counters.refreshes_ok,
                "failed": refresher.counters.refreshes_failed,
                "last": None if refresher.last_refresh is None else msgspec.to_builtins(refresher.last_refresh.shape()),
            }
        )

    app.router.lifespan_context = lifespan
    app.router.routes.append(Route("/bench/loop", loop_stats, methods=["GET"]))
    return app


def bare_app() -> Starlette:
    """Returns $BENCH_BODY (and $BENCH_BODY_GZIP, gzip-encoded) as they are; a bare 304 at /bare-304. With
    $BENCH_HEADERS (a JSON file: case -> the service's response headers), the same three answers also at
    SAME_HEADERS_PATHS, each with the headers the service sent for it: the same bytes on the wire."""
    body = Path(os.environ["BENCH_BODY"]).read_bytes()
    gzip_path = os.environ.get("BENCH_BODY_GZIP")
    gzipped = Path(gzip_path).read_bytes() if gzip_path else b""
    routes = [_same_headers_route(case, sent, body, gzipped) for case, sent in _same_headers().items()]

    async def identity(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async def gzip(request: Request) -> Response:
        return Response(gzipped, media_type="application/json", headers={"content-encoding": "gzip"})

    async def not_modified(request: Request) -> Response:
        return Response(status_code=304, headers={"etag": '"bare"'})

    return Starlette(
        routes=[
            Route(BARE_PATHS["identity"], identity, methods=["GET"]),
            Route(BARE_PATHS["gzip"], gzip, methods=["GET"]),
            Route(BARE_PATHS["not_modified"], not_modified, methods=["GET"]),
            *routes,
        ]
    )


def _same_headers() -> dict[str, list[tuple[str, str]]]:
    path = os.environ.get("BENCH_HEADERS")
    return (
        {case: [tuple(h) for h in headers] for case, headers in json.loads(Path(path).read_text()).items()}
        if path
        else {}
    )


def _same_headers_route(case: str, sent: list[tuple[str, str]], body: bytes, gzipped: bytes) -> Route:
    headers = {name: value for name, value in sent if name.lower() not in _ADDED_BY_THE_SERVER}
    content = {"identity": body, "gzip": gzipped, "not_modified": b""}[case]
    status = 304 if case == "not_modified" else 200

    async def endpoint(request: Request) -> Response:
        return Response(content, status_code=status, headers=headers)

    return Route(SAME_HEADERS_PATHS[case], endpoint, methods=["GET"])
