"""`create_app(settings, redis)` and the lifespan that wires settings -> Redis -> scanner -> snapshot -> HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.http.dashboard import Dashboard
from service.http.delivery import Delivery
from service.http.envelope import ERRORS_BY_STATUS, ErrorCode, error
from service.http.metrics import Metrics
from service.http.middleware import build_limiter, build_middleware
from service.http.openapi import build_document
from service.http.routes import EXCEPTION_HANDLERS, Endpoints, build_routes
from service.http.streams import StreamHub
from service.query.answers import QueryService
from service.settings import Settings, load_settings, settings_file
from service.snapshot.pipeline import build_pipeline
from service.snapshot.refresher import RefreshFailed
from service.snapshot.worker import RefreshLoop, run_on
from service.source.clients import RedisClient, create_client

logger = logging.getLogger("service.http.app")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = ERRORS_BY_STATUS.get(exc.status_code, ErrorCode.INTERNAL)
    return error(code, headers=dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error(ErrorCode.INTERNAL)


def create_app(
    settings: Settings | None = None,
    redis: RedisClient | None = None,
    clock: Callable[[], int] | None = None,
    settings_from: Path | None = None,
) -> Starlette:
    """The service. `redis` replaces the client made from `settings.redis.url` (and is then not closed by us);
    `settings_from` is the file `settings` were read from, shown in cache-stats (read here when not given)."""
    if settings is None:
        settings_from, settings = settings_file(), load_settings()
    owns_client = redis is None
    client = create_client(settings) if redis is None else redis
    rt = settings.running_tasks
    # The refreshes run on a loop of their own, in a thread, so that no read load can starve them (see
    # service.snapshot.worker); a client given by the caller stays on the caller's loop, with the refreshes.
    refresh_loop = RefreshLoop() if owns_client and rt.cache_enabled and rt.refresh_thread else None
    pipeline = build_pipeline(settings, client, clock, refresh_loop)
    refresher = pipeline.refresher
    follower = pipeline.follower
    streams = StreamHub(settings.events, pipeline.changes)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        streams.start()
        if refresh_loop is not None:
            refresh_loop.start()
        if rt.cache_enabled:
            # The change feed first (when it is on): what is written while the first scan runs is announced.
            await run_on(refresh_loop, follower.start())
            await run_on(refresh_loop, follower.wait_first_attempt(rt.redis_timeout / 1000))
            # The first snapshot before the first request; a Redis that is down, or a first scan over its budget,
            # only delays it to the job (which goes on from what the failed scan decoded).
            try:
                await refresher.refresh("startup")
            except RefreshFailed as failure:
                logger.warning(
                    "no snapshot at startup (%s); serving errors until a refresh succeeds (every %g s)",
                    failure.detail,
                    rt.refresh_interval,
                )
            await refresher.start()
        try:
            yield
        finally:
            streams.close()  # (the server closes them before it waits for responses: service.http.server)
            await run_on(refresh_loop, follower.stop())
            await refresher.stop()
            await run_on(refresh_loop, pipeline.source.aclose())
            if refresh_loop is not None:
                await refresh_loop.run(client.aclose())  # its connections live on that loop
                await refresh_loop.stop()
            elif owns_client:
                await client.aclose()

    queries = QueryService(rt, pipeline.history)
    delivery = Delivery(rt.refresh_interval)
    endpoints = Endpoints(
        settings, refresher, queries, delivery, pipeline.source, settings_from, follower, pipeline.changes, streams
    )
    running = endpoints.running
    metrics = Metrics(
        refresher, delivery.counters, rt.running_statuses, rt.cache_ttl, follower, streams.info, pipeline.source
    )
    limiter = build_limiter(settings)
    if limiter is not None:
        metrics.add_gauge("rate_limit_clients", "Clients whose rate-limit bucket is remembered.", lambda: len(limiter))
    app = Starlette(
        routes=build_routes(running, endpoints.events, Dashboard()),
        middleware=build_middleware(settings, metrics, limiter, running),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error, **EXCEPTION_HANDLERS},
    )
    app.state.endpoints = endpoints
    app.state.settings = settings
    app.state.refresher = refresher
    app.state.queries = queries
    app.state.streams = streams
    app.state.metrics = metrics
    app.state.limiter = limiter
    app.state.openapi = msgspec.json.encode(build_document(settings))
    return app
