"""The ASGI middleware in front of the routes, outermost first, and why in that order."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.access_log import REQUEST_ID_HEADER, RequestLog
from service.auth import Authenticator
from service.metrics import Metrics, RequestMetrics
from service.ratelimit import RateLimiter
from service.security import AccessControl, SecurityHeaders
from service.settings import Settings


def build_limiter(settings: Settings) -> RateLimiter | None:
    """The per-client limiter, or None when `rate_limit.requests_per_second` is 0."""
    limits = settings.rate_limit
    if limits.requests_per_second <= 0:
        return None
    return RateLimiter(limits.requests_per_second, limits.burst, limits.max_clients)


def build_middleware(settings: Settings, metrics: Metrics, limiter: RateLimiter | None) -> list[Middleware]:
    """Every middleware is pure ASGI (none buffers a response), listed outermost first."""
    stack: list[Middleware] = []
    if settings.server.trusted_proxies:
        # first, so that the log, the limits and the handlers all see the client a trusted proxy names
        stack.append(Middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.server.trusted_proxies)))
    # nosniff on everything, including the 500 the request log sends for an unhandled error
    stack.append(Middleware(SecurityHeaders))
    # the request id and the access line cover every answer below, 401 and 429 included
    stack.append(Middleware(RequestLog, access_log=settings.logging.access_log))
    stack.append(Middleware(RequestMetrics, metrics=metrics))
    cors = settings.cors
    if cors.allowed_origins:
        # before access control: browsers send preflights without the Authorization header
        stack.append(
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
        stack.append(Middleware(AccessControl, authenticator=authenticator, limiter=limiter))
    return stack
