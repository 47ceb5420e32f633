"""The HTTP server's own limits: uvicorn's httptools protocol with a cap on the size of a request's head and a
deadline for reading it, and the uvicorn Config that uses it.

uvicorn's httptools protocol reads a request's head (request line and headers) for as long as it takes and as
large as it comes: httptools joins a header's pieces by concatenation, so a 64 MB header costs seconds of the
event loop (every other client waits) and a client that never finishes its head keeps its connection forever
(`timeout_keep_alive` only starts after a response). `BoundedHttpToolsProtocol` feeds the parser no more than
`max_header_bytes` of an unfinished head, answers 431 past it and 408 past `header_timeout`, and closes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
from asyncio import Transport
from asyncio.events import AbstractEventLoop, TimerHandle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from service.settings import ServerSettings
from service.shapes.envelope import Error

logger = logging.getLogger("service.http.server")


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost the server before its request reaches the app (`server.*` settings, or the
    command line's options). The defaults (service.settings.ServerSettings) suit the usual deployment: many
    dashboards polling every second or two, possibly a thousand behind one NAT address, each sending a Bearer
    token and whatever cookies its domain carries:

    - max_header_bytes, 64 KiB: at least what a proxy in front of us lets through (nginx's
      large_client_header_buffers 4 x 8k = 32 KiB, Cloudflare 32 KiB, AWS ALB 64 KiB), four times Node's
      --max-http-header-size and h11's max_incomplete_event_size (16 KiB), far above a Bearer JWT plus a domain's
      cookies; Go's 1 MiB would let every refused request cost 16 times as much.
    - header_timeout, 10 s, for a request's head from its first byte and for a new connection's first byte: a
      dashboard's head is one or two TCP segments, one round trip; nginx's and Node's 60 s would let a slow client
      hold a connection six times longer.
    - keep_alive_timeout, 5 s (uvicorn's timeout_keep_alive): a dashboard polling every 1-2 s reuses its
      connection. Behind a proxy or load balancer, keep its upstream idle timeout below this one.
    - max_connections, 8192 (uvicorn's limit_concurrency: past it, 503): a thousand dashboards behind one NAT
      hold about a thousand keep-alive connections, up to six each while a page fetches several views, at about
      10 KiB each. Each is a file descriptor: `fit_to_fd_limit` raises the soft RLIMIT_NOFILE (often 1024)."""

    max_header_bytes: int
    header_timeout: float
    keep_alive_timeout: int
    max_connections: int

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ServerLimits:
        return cls(server.max_header_bytes, server.header_timeout, server.keep_alive_timeout, server.max_connections)

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "header_timeout", "keep_alive_timeout", "max_connections"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} = {value!r}: must be a finite number > 0")


@dataclass
class RefusalCounters:
    """Connections the protocol refused or closed before their request reached the app, since start."""

    header_too_large: int = 0  # 431: a head (or a chunked body's trailers) over max_header_bytes
    header_timeout: int = 0  # 408: a head not complete header_timeout after its first byte
    idle_timeout: int = 0  # closed without an answer: no byte within header_timeout of connecting
    body_timeout: int = 0  # closed: the body of an answered request not complete header_timeout later


# The process's counters, for the app to read (metrics): the protocol counts here unless told otherwise.
REFUSALS = RefusalCounters()

# While a head is read, the parser gets at most this much at once: the most by which a head that begins in the
# same read as the previous request's end (pipelining) may exceed max_header_bytes before it is refused.
_PIECE = 16 * 1024
_JSON_CLOSE = b"content-type: application/json\r\nx-content-type-options: nosniff\r\nconnection: close\r\n"
_TOO_LARGE = msgspec.json.encode(Error(code=431, message="请求头过大"))
_TIMEOUT = msgspec.json.encode(Error(code=408, message="请求头接收超时"))


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size cap and a deadline on each request's head.

    The cap: `data_received` hands the parser an unfinished head (or a chunked body's trailers, parsed the same
    way) in pieces and counts them; once `max_header_bytes` are in without the head being complete, the next
    byte gets 431 and the connection is closed: the rest is never read. The count restarts at every request.

    The deadline: a new connection has `header_timeout` seconds for its first byte (else it is closed without an
    answer), and every request's head must be complete `header_timeout` seconds after its first byte (else 408
    and close). Between requests uvicorn's keep-alive timeout applies, as before; and a request answered before
    its body was all in (no route reads bodies) has `header_timeout` more for the rest, else the connection is
    closed: a body trickled byte by byte would otherwise hold it forever, as each byte stops the keep-alive
    timer.

    While an earlier request's response is still being written (pipelining), a refused head is not answered:
    the responses in progress are finished, then the connection is closed.
    """

    limits: ClassVar[ServerLimits] = ServerLimits.from_settings(ServerSettings())
    counters: ClassVar[RefusalCounters] = REFUSALS

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._in_head = True  # what the parser reads now counts against max_header_bytes
        self._in_trailers = False  # ... and it is a chunked body's trailers, not a request's head
        self._head_bytes = 0
        self._head_started = False  # a byte of the current head arrived: its deadline runs
        self._in_message = False  # between a request's head and its end (its body)
        self._deadline: TimerHandle | None = None  # the head's, the first byte's or an answered body's
        self._refused = False  # a head was refused: read nothing more

    # -- the connection ------------------------------------------------------------------------------------

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline(self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_head and len(data) <= _PIECE:  # the common case: a body
            super().data_received(data)
            return
        view = memoryview(data)
        offset, end = 0, len(data)
        while offset < end:
            if self._in_head:
                if not self._head_started and not self._in_trailers:  # (trailers: the body's time, not a head's)
                    self._start_head()
                room = self.limits.max_header_bytes - self._head_bytes
                if room <= 0:
                    self._refuse_too_large()
                    return
                size = min(room, _PIECE, end - offset)
                self._head_bytes += size  # before feeding: completing the head resets the count
            else:
                size = min(_PIECE, end - offset)
            piece = data if size == end else view[offset : offset + size]
            offset += size
            super().data_received(piece)  # type: ignore[arg-type]  # httptools takes any buffer
            if self._refused or self.transport.is_closing():
                return
            upgraded = self.transport.get_protocol()
            if upgraded is not self:  # WebSocket: the rest of the read is the new protocol's
                if offset < end:
                    upgraded.data_received(bytes(view[offset:]))  # type: ignore[attr-defined]
                return

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_started:  # the next request's head began meanwhile: its deadline, not keep-alive, applies
            self._unset_keepalive_if_required()
        if self._in_message and not self.transport.is_closing() and self.cycle.response_complete:
            # answered, but the request's body (or trailers) is still coming: nobody reads it; it gets
            # header_timeout to end, so that each trickled byte (which stops the keep-alive timer) cannot
            # hold the connection forever
            self._set_deadline(self._body_timed_out)

    # -- parser callbacks ----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # a request that began in the same read as the previous one ended: its head's deadline, not the
        # keep-alive timer, applies now
        self._unset_keepalive_if_required()
        if not self._head_started:
            self._start_head()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._cancel_deadline()
        self._in_head = self._in_trailers = self._head_started = False
        self._head_bytes = 0
        self._in_message = True
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        # a chunk's size line was read; if the chunk is the last one (size 0), trailers follow, parsed like a
        # head; otherwise on_body comes at once and ends the count
        self._in_head = self._in_trailers = True
        self._head_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._in_head = self._in_trailers = False
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._in_trailers, self._in_message = True, False, False  # the next head, when it comes
        self._head_bytes = 0
        if self._deadline is not None:  # the body of an answered request ended in time
            self._cancel_deadline()
            if self.timeout_keep_alive_task is None:  # data stopped the keep-alive timer: idle from now
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    # -- the cap and the deadlines -------------------------------------------------------------------------

    def _set_deadline(self, expired: Callable[[], None]) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.limits.header_timeout, expired)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _start_head(self) -> None:
        self._head_started = True
        self._set_deadline(self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._refused:
            return
        if not self._head_started:  # a new connection that never sent a byte
            self.counters.idle_timeout += 1
            self._log("closed: no request within %.3g s", self.limits.header_timeout)
            self._refused = True
            self.transport.close()
            return
        self.counters.header_timeout += 1
        self._log("408: request head not complete %.3g s after its first byte", self.limits.header_timeout)
        self._refuse(408, _TIMEOUT)

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._refused:
            return
        self.counters.body_timeout += 1
        self._log("closed: body of an answered request not complete %.3g s later", self.limits.header_timeout)
        self._refused = True
        self.transport.close()

    def _refuse_too_large(self) -> None:
        self.counters.header_too_large += 1
        what = "trailers" if self._in_trailers else "request head"
        self._log("431: %s over %d bytes (%d read)", what, self.limits.max_header_bytes, self._head_bytes)
        self._refuse(431, _TOO_LARGE)

    def _refuse(self, status: int, body: bytes) -> None:
        self._refused = True
        self._cancel_deadline()
        cycle = self.cycle
        if self._in_trailers:
            # the request is the app's already and its body will never end: close, which tells the app
            # (http.disconnect) and cuts its response short
            self.transport.close()
            return
        if cycle is not None and not cycle.response_complete:
            # an earlier request's response is in progress (pipelining): no answer in the middle of it; it and
            # the requests queued behind it are finished, then the connection is closed
            self.flow.pause_reading()
            cycle.keep_alive = False
            return
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend((name, b": ", value, b"\r\n"))
        content.extend((_JSON_CLOSE, b"content-length: %d\r\n\r\n" % len(body), body))
        self.transport.write(b"".join(content))
        self.transport.close()

    def _log(self, message: str, *args: object) -> None:
        # never the head's content: only sizes, times and the peer's address
        if logger.isEnabledFor(logging.DEBUG):
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
            logger.debug("%s " + message, peer, *args)


def protocol_class(limits: ServerLimits, counters: RefusalCounters | None = None) -> type[BoundedHttpToolsProtocol]:
    """The protocol with these limits, counting its refusals in `counters` (default: REFUSALS)."""

    class Configured(BoundedHttpToolsProtocol):
        pass

    Configured.limits = limits
    Configured.counters = REFUSALS if counters is None else counters
    Configured.__name__ = Configured.__qualname__ = BoundedHttpToolsProtocol.__name__
    return Configured


def uvicorn_config(
    app: Callable[..., Any],
    host: str,
    port: int,
    limits: ServerLimits | None = None,
    *,
    counters: RefusalCounters | None = None,
    **options: Any,
) -> uvicorn.Config:
    """A uvicorn Config serving `app` with our protocol and `limits`; `options` are any other Config options."""
    limits = limits or ServerLimits.from_settings(ServerSettings())
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(limits, counters),
        timeout_keep_alive=limits.keep_alive_timeout,
        limit_concurrency=limits.max_connections,
        **options,
    )


class Server(uvicorn.Server):
    """uvicorn's server, which ends the app's event streams (`on_shutdown`) as its shutdown begins.

    uvicorn's graceful shutdown stops accepting, then waits for every response in progress to finish before the
    app's lifespan hears of it: a stream, which never finishes by itself, would hold the process until its client
    goes away. Ending the streams first lets the shutdown go on at once (their clients reconnect elsewhere with
    Last-Event-ID)."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)


# File descriptors kept for what is not a client connection: the listening socket, the event loop, stdio and
# log files, the Redis connection pool.
FD_RESERVE = 128


def fit_to_fd_limit(limits: ServerLimits) -> ServerLimits:
    """`limits` with max_connections that the process's file descriptors can hold.

    Raises the soft RLIMIT_NOFILE (often 1024) toward max_connections + FD_RESERVE, as far as the hard limit
    allows; when even that is too low, lowers max_connections to fit and says so in a warning."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = limits.max_connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return limits
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the file descriptor limit from %d to %d: %s", soft, target, exc)
    if soft >= needed:
        return limits
    fitted = max(soft - FD_RESERVE, soft // 2)
    logger.warning(
        "max_connections lowered from %d to %d: the file descriptor limit is %d (ulimit -n)",
        limits.max_connections,
        fitted,
        soft,
    )
    return dataclasses.replace(limits, max_connections=fitted)
