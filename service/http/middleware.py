"""The ASGI middleware in front of the routes, outermost first, and why in that order."""

from __future__ import annotations

import logging
import time

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.http.access_log import (
    REQUEST_ID_HEADER,
    accept_request_id,
    loggable_target,
    request_id_var,
    write_access_line,
)
from service.http.auth import Authenticator
from service.http.delivery import send_chunks
from service.http.envelope import ErrorCode, error
from service.http.metrics import Metrics, route_template
from service.http.ratelimit import RateLimiter
from service.http.routes import RunningList
from service.http.security import AccessControl, header
from service.settings import Settings

logger = logging.getLogger("service.access")
_NOSNIFF = (b"x-content-type-options", b"nosniff")


def build_limiter(settings: Settings) -> RateLimiter | None:
    """The per-client limiter, or None when `rate_limit.requests_per_second` is 0."""
    limits = settings.rate_limit
    if limits.requests_per_second <= 0:
        return None
    return RateLimiter(limits.requests_per_second, limits.burst, limits.max_clients)


def build_middleware(
    settings: Settings, metrics: Metrics, limiter: RateLimiter | None, running: RunningList
) -> list[Middleware]:
    """Every middleware is pure ASGI (none buffers a response), listed outermost first."""
    checks: list[Middleware] = []  # between the bookkeeping and the routes
    cors = settings.cors
    if cors.allowed_origins:
        # before access control: browsers send preflights without the Authorization header
        checks.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors.allowed_origins),
                allow_methods=["GET", "HEAD"],
                allow_headers=["Authorization", "If-None-Match", REQUEST_ID_HEADER],
                expose_headers=["ETag", "X-Snapshot-Generation", REQUEST_ID_HEADER, "Retry-After"],
                max_age=cors.max_age,
            )
        )
    tokens = settings.auth.tokens
    if tokens or limiter is not None:
        authenticator = Authenticator(tokens) if tokens else None
        checks.append(Middleware(AccessControl, authenticator=authenticator, limiter=limiter))
    stack: list[Middleware] = []
    if settings.server.trusted_proxies:
        # first, so that the log, the limits and the handlers all see the client a trusted proxy names
        stack.append(Middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.server.trusted_proxies)))
    # The request id, nosniff, the metrics and the access line cover every answer below, 401 and 429 included.
    # With no check in between, it answers a poll that is ready itself.
    stack.append(
        Middleware(
            RequestBookkeeping,
            metrics=metrics,
            access_log=settings.logging.access_log,
            polls=None if checks else running,
        )
    )
    stack += checks
    # last: a poll of a fresh snapshot has passed every check above and needs nothing below
    stack.append(Middleware(PollShortcut, polls=running))
    return stack


class PollShortcut:
    """Innermost middleware: answers a poll of a fresh snapshot (`RunningList.ready`, the same answer the route
    gives) after every other middleware (ids, metrics, access line, CORS, tokens, rate limit) and before the
    exception layer and the router; everything else, and a poll whose answer is not ready, goes on to the
    routes."""

    def __init__(self, app: ASGIApp, *, polls: RunningList) -> None:
        self.app = app
        self._polls = polls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self._polls.ready(scope)
        if answer is None:
            await self.app(scope, receive, send)
        else:
            await send_chunks(scope, send, *answer)


class RequestBookkeeping:
    """Pure ASGI middleware for what every request gets: its id (the client's `X-Request-ID` when sane, echoed
    back), `X-Content-Type-Options: nosniff`, the request metrics, the access line, and the last resort for an
    unhandled error (the 500 envelope, logged once with its stack trace, which never reaches the body).

    One layer rather than one per concern: each layer costs every request a coroutine and a wrapped `send`,
    which is a visible share of what a whole 304 costs through uvicorn."""

    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, access_log: bool = True, polls: RunningList | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.polls = polls  # set when nothing stands between this layer and the routes but PollShortcut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = accept_request_id(header(scope, b"x-request-id"))
        added = (_NOSNIFF, (b"x-request-id", request_id.encode("latin-1")))
        answer = None if self.polls is None else self.polls.ready(scope)
        status = 0
        sent = 0

        async def send_and_see(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                # a new list: a response may send a header list it keeps for the next request
                message["headers"] = [*message.get("headers", ()), *added]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        context = request_id_var.set(request_id)
        try:
            if answer is None:
                await self.app(scope, receive, send_and_see)
            else:  # a poll answered here: its status and bytes are known, its sends need no watching
                status, headers, chunks = answer
                headers.extend(added)  # the answer's own list
                sent = await send_chunks(scope, send, status, headers, chunks)
        except Exception:
            logger.exception(
                "unhandled error on %s %s", scope["method"], loggable_target(scope), extra={"request_id": request_id}
            )
            if status:
                raise  # the response has begun: all that is left is to drop the connection
            await error(ErrorCode.INTERNAL)(scope, receive, send_and_see)
        finally:
            request_id_var.reset(context)
            seconds = time.perf_counter() - started
            self.metrics.observe_request(route_template(scope), scope["method"], status or 500, seconds)
            if self.access_log:
                write_access_line(scope, status, sent, seconds, request_id)
