"""`create_app(settings, redis)` and the lifespan that wires settings -> Redis -> scanner -> snapshot -> HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.domain.history import History
from service.domain.tracker import Tracker
from service.http.envelope import ErrorCode, error
from service.http.metrics import Metrics
from service.http.middleware import build_limiter, build_middleware
from service.http.openapi import build_document
from service.http.routes import EXCEPTION_HANDLERS, routes
from service.query.answers import QueryService
from service.settings import Settings, load_settings
from service.snapshot.refresher import Refresher, RefreshFailed
from service.source.redis_source import RedisSource, create_client
from service.source.scanner import Scanner

logger = logging.getLogger("service.http.app")

_ERRORS_BY_STATUS = {code.status: code for code in ErrorCode}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _ERRORS_BY_STATUS.get(exc.status_code, ErrorCode.INTERNAL)
    return error(code, headers=dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error(ErrorCode.INTERNAL)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Redis client -> scans -> snapshots, with the history the tracker feeds."""

    source: RedisSource
    refresher: Refresher
    history: History


def build_pipeline(settings: Settings, client: aioredis.Redis, clock: Callable[[], int] | None = None) -> Pipeline:
    """The pipeline as the service and the `scan` command both run it."""
    rt = settings.running_tasks
    source = RedisSource(client, fetch_max_bytes=rt.fetch_max_bytes)
    history = History(rt.history_size, clock)
    tracker = Tracker(rt.producer_key_ttl, stall_after=rt.stall_after, on_departures=history.record)
    scanner = Scanner(source, rt, clock, finished_sink=tracker.observe_finished)
    return Pipeline(source, Refresher(scanner, tracker, rt, clock), history)


def create_app(
    settings: Settings | None = None,
    redis: aioredis.Redis | None = None,
    clock: Callable[[], int] | None = None,
) -> Starlette:
    """The service. `redis` replaces the client made from `settings.redis.url` (and is then not closed by us)."""
    settings = load_settings() if settings is None else settings
    owns_client = redis is None
    client = create_client(settings) if redis is None else redis
    rt = settings.running_tasks
    pipeline = build_pipeline(settings, client, clock)
    refresher = pipeline.refresher

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if rt.cache_enabled:
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
            refresher.start()
        try:
            yield
        finally:
            await refresher.stop()
            if owns_client:
                await client.aclose()

    metrics = Metrics(refresher, rt.running_statuses, rt.cache_ttl)
    limiter = build_limiter(settings)
    if limiter is not None:
        metrics.add_gauge("rate_limit_clients", "Clients whose rate-limit bucket is remembered.", lambda: len(limiter))
    app = Starlette(
        routes=routes,
        middleware=build_middleware(settings, metrics, limiter, refresher),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error, **EXCEPTION_HANDLERS},
    )
    app.state.settings = settings
    app.state.source = pipeline.source
    app.state.refresher = refresher
    app.state.queries = QueryService(rt, pipeline.history)
    app.state.metrics = metrics
    app.state.limiter = limiter
    app.state.openapi = orjson.dumps(build_document(settings))
    return app
