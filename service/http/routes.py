"""HTTP handlers, thin: parse the request, ask the refresher and the queries, hand the answer to the delivery."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.http.dashboard import ASSET_PREFIX, ASSETS, PAGE_PATHS, Dashboard
from service.http.delivery import Answer, Delivery
from service.http.envelope import FAILURE_CODES, ErrorCode, bad_request, error, ok
from service.http.events import EventStream
from service.http.streams import StreamHub
from service.query.answers import QueryService
from service.query.params import QueryError
from service.settings import Settings
from service.shapes.operations import CacheStats, Health, Ready, RedisInfo, RedisNode
from service.snapshot.changes import ChangeLog
from service.snapshot.follower import Follower
from service.snapshot.refresher import Refresher, RefreshFailed
from service.source.keysource import KeySource

logger = logging.getLogger("service.http.routes")

API_PREFIX = "/codebase-embedder/api/v1/tasks"
RUNNING_PATH = f"{API_PREFIX}/running"
EVENTS_PATH = f"{RUNNING_PATH}/events"
_POLL_METHODS = frozenset({"GET", "HEAD"})


class TaskIdConvertor(PathConvertor):
    """Any task id, `/` and line breaks included: Starlette's `path` (`.*`) stops at a newline, and the `$` after it
    matches before a trailing one, so `running/abc%0A` would answer for task `abc`."""

    regex = "(?s:.*)"


register_url_convertor("task_id", TaskIdConvertor())


class Endpoints:
    """What the handlers share: the refresher, the queries and the delivery, given by `create_app`."""

    def __init__(
        self,
        settings: Settings,
        refresher: Refresher,
        queries: QueryService,
        delivery: Delivery,
        source: KeySource,
        settings_from: Path | None,
        follower: Follower,
        changes: ChangeLog,
        streams: StreamHub,
    ) -> None:
        self.settings = settings
        self.follower = follower
        self.settings_from = settings_from
        self.refresher = refresher
        self.queries = queries
        self.delivery = delivery
        self.source = source
        self.streams = streams
        self.running = RunningList(refresher, queries, delivery, changes)
        self.events = EventStream(streams, refresher, queries, changes)


def _endpoints(request: Request) -> Endpoints:
    endpoints: Endpoints = request.app.state.endpoints
    return endpoints


def _params(request: Request) -> list[tuple[str, str]]:
    # without a query string, nothing to parse
    return request.query_params.multi_items() if request.scope["query_string"] else []


class RunningList:
    """`GET .../tasks/running` as a plain ASGI endpoint, so that a poll makes no Request or Response object.
    `ready` is the same answer for a poll of a fresh snapshot, given before routing by the middleware."""

    def __init__(self, refresher: Refresher, queries: QueryService, delivery: Delivery, changes: ChangeLog) -> None:
        self._refresher = refresher
        self._queries = queries
        self._delivery = delivery
        self._changes = changes
        self.route: Route | None = None  # the route that serves it, set by `build_routes`

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
        """The answer to a poll (no query string) of a fresh snapshot when nothing has to be made for it first;
        None otherwise (not such a poll, no fresh snapshot, or its compressed variant still to be made)."""
        if not self.is_poll(scope):
            return None
        snapshot = self._refresher.fresh()
        if snapshot is None:
            return None
        answer = self._delivery.ready(scope, snapshot.rendered, snapshot, False)
        if answer is not None:
            scope["route"] = self.route  # as the router would set it: the metrics label requests by route
        return answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # a refused parameter is answered before any scan
        items = Request(scope).query_params.multi_items() if scope["query_string"] else None
        queries = self._queries
        query = None if items is None else queries.parse_running(items)
        since = None if items is None else queries.parse_since(items)
        snapshot, live = await self._refresher.current()
        if query is None:
            rendered = snapshot.rendered
        elif since is None:
            rendered = queries.running(snapshot, query)
        else:
            rendered = queries.since(snapshot, query, since, self._changes)
        await self._delivery.send(scope, send, rendered, snapshot, live)


async def running_task(request: Request) -> Response:
    endpoints = _endpoints(request)
    queries = endpoints.queries
    projection = queries.parse_task(_params(request))
    snapshot, live = await endpoints.refresher.current()
    task_id = request.path_params["taskId"]
    rendered = queries.task(snapshot, task_id, projection)
    if rendered is None:
        return error(ErrorCode.NOT_FOUND, queries.not_running(task_id))
    return endpoints.delivery.response(rendered, snapshot, live)


async def finished_tasks(request: Request) -> Response:
    endpoints = _endpoints(request)
    query = endpoints.queries.parse_finished(_params(request))
    # the history is as fresh as the snapshot: one scan feeds both
    snapshot, live = await endpoints.refresher.current()
    return endpoints.delivery.response(endpoints.queries.finished(query), snapshot, live)


async def task_stats(request: Request) -> Response:
    endpoints = _endpoints(request)
    snapshot, live = await endpoints.refresher.current()
    return endpoints.delivery.response(endpoints.queries.stats(snapshot), snapshot, live)


async def cache_stats(request: Request) -> Response:
    endpoints = _endpoints(request)
    refresher, settings = endpoints.refresher, endpoints.settings
    counters = _camel({**asdict(refresher.counters), **asdict(endpoints.delivery.counters)})
    counters["producerTimesClamped"] = refresher.producer_times_clamped
    return ok(
        CacheStats(
            cache_enabled=settings.running_tasks.cache_enabled,
            snapshot=refresher.snapshot_info(),
            last_refresh=None if refresher.last_refresh is None else refresher.last_refresh.shape(),
            counters=counters,
            job=refresher.job_info(),
            settings=settings.redacted(),
            settings_file=None if endpoints.settings_from is None else str(endpoints.settings_from),
            query_cache=endpoints.queries.cache_stats(),
            change_feed=endpoints.follower.info(),
            streams=endpoints.streams.info(),
            redis=_redis_info(endpoints),
        )
    )


def _redis_info(endpoints: Endpoints) -> RedisInfo:
    source = endpoints.source
    return RedisInfo(
        mode=endpoints.settings.redis.mode,
        nodes=[RedisNode(n.node, n.pages, n.keys, n.duration_ms, n.errors) for n in source.nodes()],
        rewalks=source.rewalks,
        failovers=source.failovers,
    )


def _camel(counts: dict[str, int]) -> dict[str, int]:
    """snake_case names as the camelCase the API speaks."""
    out: dict[str, int] = {}
    for name, value in counts.items():
        head, *rest = name.split("_")
        out[head + "".join(part.capitalize() for part in rest)] = value
    return out


async def healthz(request: Request) -> Response:
    return ok(Health())


async def readyz(request: Request) -> Response:
    endpoints = _endpoints(request)
    if endpoints.settings.running_tasks.cache_enabled:
        if endpoints.refresher.is_ready():
            return ok(Ready(reason="fresh snapshot"))
        return error(ErrorCode.REDIS_UNAVAILABLE, "not ready: no fresh snapshot yet")
    try:
        await endpoints.source.ping()
    except Exception as exc:  # any failure to answer PING means not ready
        logger.debug("readiness PING failed: %s", exc)
        return error(ErrorCode.REDIS_UNAVAILABLE)
    return ok(Ready(reason="redis answers PING"))


async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


async def openapi(request: Request) -> Response:
    document: bytes = request.app.state.openapi
    return Response(document, media_type="application/json")


# The handlers leave two failures to these: a refused query parameter (400, naming it) and a scan that could not
# give a snapshot (503/504/500, as its Failure says).


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QueryError)
    return bad_request(exc)


async def _refresh_failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RefreshFailed)
    return error(FAILURE_CODES[exc.failure])


EXCEPTION_HANDLERS = {QueryError: _bad_request, RefreshFailed: _refresh_failed}


def build_routes(running: RunningList, events: EventStream, dashboard: Dashboard) -> list[Route]:
    """Every route; the running list's endpoint is `running`, its event stream's `events`."""
    running.route = Route(RUNNING_PATH, running, methods=["GET"])
    return [
        running.route,
        Route(EVENTS_PATH, events, methods=["GET"]),
        Route(f"{API_PREFIX}/running/{{taskId:task_id}}", running_task, methods=["GET"]),
        Route(f"{API_PREFIX}/finished", finished_tasks, methods=["GET"]),
        Route(f"{API_PREFIX}/stats", task_stats, methods=["GET"]),
        Route(f"{API_PREFIX}/cache-stats", cache_stats, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *(Route(path, dashboard.page_endpoint, methods=["GET"]) for path in PAGE_PATHS),
        *(Route(ASSET_PREFIX + name, dashboard.asset_endpoint, methods=["GET"]) for name in ASSETS),
    ]
