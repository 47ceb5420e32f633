"""Who may call and how often, as pure ASGI middleware in front of the routes: bearer tokens and per-client
rate limits. Probes (`/healthz`, `/readyz`) pass untouched."""

from __future__ import annotations

import math

from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.auth import Authenticator
from service.http.dashboard import PUBLIC_PATHS as DASHBOARD_PATHS
from service.http.envelope import ErrorCode, send_error
from service.http.ratelimit import RateLimiter

# Orchestrators probe these; they must answer whatever the tokens and however often they are asked.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# Open to anyone (still rate limited): the API contract is no secret and clients fetch it before they have
# a token; the dashboard's page and assets hold no data (its data calls carry the token).
PUBLIC_PATHS = frozenset({"/openapi.json"}) | DASHBOARD_PATHS
REALM = "running-tasks"
_NO_TOKEN = f'Bearer realm="{REALM}"'.encode()
_INVALID_TOKEN = _NO_TOKEN + b', error="invalid_token"'


def client_host(scope: Scope) -> str:
    """The client's address as the server (or a trusted proxy, see ProxyHeadersMiddleware) reports it."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AccessControl:
    """Rate limit first (so that guessing tokens is limited too), then require a valid token.

    The limit's key is the token when a valid one is presented, else the client address: clients behind one
    proxy keep separate buckets when they authenticate, and an invalid token never earns a bucket of its own."""

    def __init__(self, app: ASGIApp, *, authenticator: Authenticator | None, limiter: RateLimiter | None) -> None:
        self.app = app
        self.authenticator = authenticator
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        identity: int | None = None
        if self.authenticator is not None:
            identity = self.authenticator.identify(header(scope, b"authorization"))
        if self.limiter is not None:
            key = f"token:{identity}" if identity is not None else f"addr:{client_host(scope)}"
            wait = self.limiter.acquire(key)
            if wait > 0:
                retry = b"%d" % max(1, math.ceil(wait))
                await send_error(send, ErrorCode.TOO_MANY_REQUESTS, ((b"retry-after", retry),))
                return
        if self.authenticator is not None and identity is None and scope["path"] not in PUBLIC_PATHS:
            # RFC 6750: error="invalid_token" when a token was sent but is not valid
            challenge = _INVALID_TOKEN if header(scope, b"authorization") is not None else _NO_TOKEN
            await send_error(send, ErrorCode.UNAUTHORIZED, ((b"www-authenticate", challenge),))
            return
        await self.app(scope, receive, send)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header `name` (lower case), without building a Headers object."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
