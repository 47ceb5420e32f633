"""HTTP handlers, thin: parse the request, ask the refresher, respond."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.delivery import snapshot_response
from service.refresher import Refresher, RefreshFailed
from service.responses import ErrorCode, error, ok
from service.settings import Settings

logger = logging.getLogger("service.routes")

API_PREFIX = "/codebase-embedder/api/v1/tasks"


def _refresher(request: Request) -> Refresher:
    refresher: Refresher = request.app.state.refresher
    return refresher


async def running_tasks(request: Request) -> Response:
    refresher = _refresher(request)
    try:
        snapshot, live = await refresher.current()
    except RefreshFailed as failure:
        return error(failure.code)
    settings: Settings = request.app.state.settings
    response, not_modified = await snapshot_response(
        snapshot,
        live=live,
        refresh_interval=settings.running_tasks.refresh_interval,
        if_none_match=request.headers.get("if-none-match"),
        accept_encoding=request.headers.get("accept-encoding"),
    )
    if not_modified:
        refresher.counters.not_modified += 1
    return response


async def cache_stats(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    data = _refresher(request).stats()
    data["settings"] = settings.redacted()
    return ok(data)


async def healthz(request: Request) -> Response:
    return ok({"status": "ok"})


async def readyz(request: Request) -> Response:
    refresher = _refresher(request)
    settings: Settings = request.app.state.settings
    if settings.running_tasks.cache_enabled:
        if refresher.is_ready():
            return ok({"ready": True, "reason": "fresh snapshot"})
        return error(ErrorCode.REDIS_UNAVAILABLE, "not ready: no fresh snapshot yet")
    try:
        await request.app.state.source.ping()
    except Exception as exc:  # any failure to answer PING means not ready
        logger.debug("readiness PING failed: %s", exc)
        return error(ErrorCode.REDIS_UNAVAILABLE)
    return ok({"ready": True, "reason": "redis answers PING"})


routes = [
    Route(f"{API_PREFIX}/running", running_tasks, methods=["GET"]),
    Route(f"{API_PREFIX}/cache-stats", cache_stats, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
