"""HTTP handlers, thin: parse the request, ask the refresher, respond."""

from __future__ import annotations

import logging

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.delivery import cache_control, snapshot_response, tag_matches
from service.metrics import Metrics
from service.query import QueryError
from service.query_service import QueryService
from service.refresher import Refresher, RefreshFailed
from service.responses import ErrorCode, error, ok
from service.result_cache import Rendered
from service.settings import Settings
from service.snapshot import Snapshot

logger = logging.getLogger("service.routes")

API_PREFIX = "/codebase-embedder/api/v1/tasks"


class TaskIdConvertor(PathConvertor):
    """Any task id, `/` and line breaks included: Starlette's `path` (`.*`) stops at a newline, and the `$` after it
    matches before a trailing one, so `running/abc%0A` would answer for task `abc`."""

    regex = "(?s:.*)"


register_url_convertor("task_id", TaskIdConvertor())


def _refresher(request: Request) -> Refresher:
    refresher: Refresher = request.app.state.refresher
    return refresher


def _queries(request: Request) -> QueryService:
    queries: QueryService = request.app.state.queries
    return queries


async def running_tasks(request: Request) -> Response:
    refresher = _refresher(request)
    try:
        query = _queries(request).parse_running(request.query_params.multi_items())
    except QueryError as exc:
        return _bad_request(exc)
    try:
        snapshot, live = await refresher.current()
    except RefreshFailed as failure:
        return error(failure.code)
    if not query.is_default:
        return _send(request, _queries(request).running(snapshot, query), snapshot, live)
    # no parameter that changes the answer: the snapshot's own body, as rendered once (and compressed once)
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


async def running_task(request: Request) -> Response:
    queries = _queries(request)
    try:
        projection = queries.parse_task(request.query_params.multi_items())
    except QueryError as exc:
        return _bad_request(exc)
    try:
        snapshot, live = await _refresher(request).current()
    except RefreshFailed as failure:
        return error(failure.code)
    task_id = request.path_params["task_id"]
    rendered = queries.task(snapshot, task_id, projection)
    if rendered is None:
        return error(ErrorCode.NOT_FOUND, queries.not_running(task_id))
    return _send(request, rendered, snapshot, live)


async def finished_tasks(request: Request) -> Response:
    queries = _queries(request)
    try:
        query = queries.parse_finished(request.query_params.multi_items())
    except QueryError as exc:
        return _bad_request(exc)
    try:  # the history is as fresh as the snapshot: the same scan feeds both
        snapshot, live = await _refresher(request).current()
    except RefreshFailed as failure:
        return error(failure.code)
    return _send(request, queries.finished(query), snapshot, live)


async def task_stats(request: Request) -> Response:
    try:
        snapshot, live = await _refresher(request).current()
    except RefreshFailed as failure:
        return error(failure.code)
    return _send(request, _queries(request).stats(snapshot), snapshot, live)


def _send(request: Request, rendered: Rendered, snapshot: Snapshot, live: bool) -> Response:
    """A rendered answer with its ETag, or 304 when the client has it (as the unfiltered read does)."""
    settings: Settings = request.app.state.settings
    name, value = cache_control(snapshot, settings.running_tasks.refresh_interval, live)
    headers = {
        "ETag": rendered.etag,
        "X-Snapshot-Generation": str(snapshot.generation),
        name.decode(): value.decode(),
    }
    if not live and tag_matches(rendered.etag, request.headers.get("if-none-match")):
        _refresher(request).counters.not_modified += 1
        return Response(status_code=304, headers=headers)
    return Response(rendered.body, media_type="application/json", headers=headers)


def _bad_request(exc: QueryError) -> Response:
    return error(ErrorCode.BAD_REQUEST, f"{ErrorCode.BAD_REQUEST.message}: {exc}", data=exc.as_data())


async def cache_stats(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    data = _refresher(request).stats()
    data["settings"] = settings.redacted()
    data["queryCache"] = _queries(request).cache_stats()
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


async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    body, content_type = registry.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


async def openapi(request: Request) -> Response:
    document: bytes = request.app.state.openapi
    return Response(document, media_type="application/json")


routes = [
    Route(f"{API_PREFIX}/running", running_tasks, methods=["GET"]),
    Route(f"{API_PREFIX}/running/{{task_id:task_id}}", running_task, methods=["GET"]),
    Route(f"{API_PREFIX}/finished", finished_tasks, methods=["GET"]),
    Route(f"{API_PREFIX}/stats", task_stats, methods=["GET"]),
    Route(f"{API_PREFIX}/cache-stats", cache_stats, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
