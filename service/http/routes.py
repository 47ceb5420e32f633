"""HTTP handlers, thin: parse the request, ask the refresher, respond."""

from __future__ import annotations

import logging

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.delivery import Answer, cache_control, make_variant, ready_answer, tag_matches
from service.http.envelope import ErrorCode, error, ok
from service.http.metrics import Metrics
from service.http.security import header
from service.query.answers import QueryService
from service.query.result_cache import Rendered
from service.query.running import QueryError
from service.settings import Settings
from service.snapshot.body import BodyResponse, send_chunks
from service.snapshot.refresher import Refresher, RefreshFailed
from service.snapshot.snapshot import Snapshot

logger = logging.getLogger("service.http.routes")

API_PREFIX = "/codebase-embedder/api/v1/tasks"
RUNNING_PATH = f"{API_PREFIX}/running"


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


def _params(request: Request) -> list[tuple[str, str]]:
    # without a query string, nothing to parse
    return request.query_params.multi_items() if request.scope["query_string"] else []


def _header(scope: Scope, name: bytes) -> str | None:
    # one header without building a Headers object
    value = header(scope, name)
    return None if value is None else value.decode("latin-1")


class RunningList:
    """`GET .../tasks/running` as a plain ASGI endpoint. A poll without a query string of a fresh snapshot is
    nearly always answered before routing (`PollShortcut`); here come the rest: query strings (the query API)
    and polls that need a live scan (cache off or snapshot stale). No Request or Response object is made for a
    poll."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        if scope["query_string"]:
            response = await self._query(Request(scope, receive), state)
            await response(scope, receive, send)
            return
        refresher: Refresher = state.refresher
        interval = state.settings.running_tasks.refresh_interval
        snapshot, live = refresher.fresh(), False
        if snapshot is None:  # stale, missing, or the cache is off: a live scan
            snapshot, live = await refresher.current()
        await send_chunks(scope, send, *await _whole_snapshot(scope, refresher, interval, snapshot, live))

    @staticmethod
    async def _query(request: Request, state: State) -> Response:
        queries: QueryService = state.queries
        query = queries.parse_running(request.query_params.multi_items())
        refresher: Refresher = state.refresher
        snapshot, live = await refresher.current()
        if query.is_default:  # parameters that change nothing (page=1 without pageSize, unknown ones)
            interval = state.settings.running_tasks.refresh_interval
            answer = await _whole_snapshot(request.scope, refresher, interval, snapshot, live)
            return BodyResponse(answer.chunks, answer.headers, answer.status)
        return _send(request, queries.running(snapshot, query), snapshot, live)


class Polls:
    """Polls of the running list (GET or HEAD, no query string) while the snapshot is fresh, answered with what
    the snapshot prepared, with no Request, Response or routing: a poll cannot fail in a way Starlette's
    exception layer would handle, and its route is known. Answered here, a 304 through uvicorn took 44 us of
    server CPU instead of 72 (a bare Starlette 304: 40). `RunningList` gives a poll the same answer by the
    routes."""

    def __init__(self, refresher: Refresher, refresh_interval: float) -> None:
        self._refresher = refresher
        self._interval = refresh_interval

    @staticmethod
    def is_poll(scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope["path"] == RUNNING_PATH
            and not scope["query_string"]
            and scope["method"] in _POLL_METHODS
            and not scope.get("root_path")  # under a prefix the router decides what the path means
        )

    def ready(self, scope: Scope) -> Answer | None:
        """The answer to a poll of a fresh snapshot when nothing has to be made for it first; None otherwise
        (not a poll, no fresh snapshot, or its compressed variant still to be made)."""
        if not self.is_poll(scope):
            return None
        refresher = self._refresher
        snapshot = refresher.fresh(count=False)
        if snapshot is None:
            return None
        answer = _ready(scope, refresher, self._interval, snapshot, False)
        if answer is not None:
            refresher.counters.served_from_snapshot += 1
            scope["route"] = RUNNING_ROUTE  # as the router would set it: the metrics label requests by route
        return answer

    async def answer(self, scope: Scope) -> Answer | None:
        """`ready`, or else the answer once the compressed variant it needs is made; None when the request is not
        a poll of a fresh snapshot."""
        answer = self.ready(scope)
        if answer is None and self.is_poll(scope) and (snapshot := self._refresher.fresh()) is not None:
            scope["route"] = RUNNING_ROUTE
            answer = await _whole_snapshot(scope, self._refresher, self._interval, snapshot, False)
        return answer


class PollShortcut:
    """Innermost middleware: answers `Polls` after every other middleware (ids, metrics, access line, CORS,
    tokens, rate limit) and before the exception layer and router; everything else goes on to the routes."""

    def __init__(self, app: ASGIApp, *, polls: Polls) -> None:
        self.app = app
        self._polls = polls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self._polls.answer(scope)
        if answer is None:
            await self.app(scope, receive, send)
        else:
            await send_chunks(scope, send, *answer)


_POLL_METHODS = frozenset({"GET", "HEAD"})


def _ready(scope: Scope, refresher: Refresher, interval: float, snapshot: Snapshot, live: bool) -> Answer | None:
    """The snapshot's own body, as rendered once (or compressed once), or a 304; None while the compressed
    variant is still to be made."""
    if_none_match, accept_encoding = _poll_headers(scope)
    answer = ready_answer(
        snapshot,
        live=live,
        refresh_interval=interval,
        if_none_match=if_none_match,
        accept_encoding=accept_encoding,
    )
    if answer is not None and answer.status == 304:
        refresher.counters.not_modified += 1
    return answer


def _poll_headers(scope: Scope) -> tuple[str | None, str | None]:
    # `If-None-Match` and `Accept-Encoding` in one pass over the request's headers (first of each)
    if_none_match = accept_encoding = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if if_none_match is None:
                if_none_match = value.decode("latin-1")
        elif name == b"accept-encoding" and accept_encoding is None:
            accept_encoding = value.decode("latin-1")
    return if_none_match, accept_encoding


async def _whole_snapshot(
    scope: Scope, refresher: Refresher, interval: float, snapshot: Snapshot, live: bool
) -> Answer:
    """`_ready`, once the compressed variant it needs is made (once per snapshot, by the first request for it)."""
    while (answer := _ready(scope, refresher, interval, snapshot, live)) is None:
        await make_variant(snapshot, _header(scope, b"accept-encoding"))
    return answer


async def running_task(request: Request) -> Response:
    queries = _queries(request)
    projection = queries.parse_task(_params(request))
    snapshot, live = await _refresher(request).current()
    task_id = request.path_params["task_id"]
    rendered = queries.task(snapshot, task_id, projection)
    if rendered is None:
        return error(ErrorCode.NOT_FOUND, queries.not_running(task_id))
    return _send(request, rendered, snapshot, live)


async def finished_tasks(request: Request) -> Response:
    queries = _queries(request)
    query = queries.parse_finished(_params(request))
    snapshot, live = await _refresher(request).current()  # the history is as fresh as the snapshot: one scan feeds both
    return _send(request, queries.finished(query), snapshot, live)


async def task_stats(request: Request) -> Response:
    snapshot, live = await _refresher(request).current()
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
    if not live and tag_matches(rendered.etag, _header(request.scope, b"if-none-match")):
        _refresher(request).counters.not_modified += 1
        return Response(status_code=304, headers=headers)
    return Response(rendered.body, media_type="application/json", headers=headers)


# The handlers leave two failures to these: a refused query parameter (400, naming it) and a scan that could not
# give a snapshot (503/504/500, as RefreshFailed says).


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QueryError)
    return error(ErrorCode.BAD_REQUEST, f"{ErrorCode.BAD_REQUEST.message}: {exc}", data=exc.as_data())


async def _refresh_failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RefreshFailed)
    return error(exc.code)


EXCEPTION_HANDLERS = {QueryError: _bad_request, RefreshFailed: _refresh_failed}


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


RUNNING_ROUTE = Route(RUNNING_PATH, RunningList(), methods=["GET"])
routes = [
    RUNNING_ROUTE,
    Route(f"{API_PREFIX}/running/{{task_id:task_id}}", running_task, methods=["GET"]),
    Route(f"{API_PREFIX}/finished", finished_tasks, methods=["GET"]),
    Route(f"{API_PREFIX}/stats", task_stats, methods=["GET"]),
    Route(f"{API_PREFIX}/cache-stats", cache_stats, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
