"""Request ids and the access log: one line per request, plain or JSON, and how the process's logging is set up.

Every request gets an id (its `X-Request-ID` when that is a sane token, else a new UUID) that is returned in
the response, attached to every log line written while the request runs, and named in its access line."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import os
import re
import sys
import time
import uuid
from contextvars import ContextVar
from typing import IO, Any, NamedTuple

import orjson
from starlette.types import Scope

from service.domain.times import format_timestamp
from service.http.security import client_host, header
from service.settings import Settings

logger = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._~:/+=@-]{1,128}")
# The API's query parameters: their values are logged as sent. Anything else a client puts in a query string
# (a token as `auth=`, `bearer=`, `?<token>`...) is logged as *** : a log holds no value not known to be safe.
LOGGED_PARAMETERS = frozenset(
    {
        "clientId",
        "status",
        "startedAfter",
        "startedBefore",
        "updatedAfter",
        "updatedBefore",
        "endedAfter",
        "endedBefore",
        "stalled",
        "sort",
        "page",
        "pageSize",
        "fields",
        "fileList",
    }
)
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def accept_request_id(value: bytes | None) -> str:
    """The client's request id when it is a plain token of at most 128 characters, else a new UUID."""
    if value:
        text = value.decode("latin-1")
        if _REQUEST_ID.fullmatch(text):
            return text
    return f"{_id_prefix}{next(_id_counter) & 0xFFFFFFFFFFFF:012x}"


def _new_id_series() -> None:
    # Ids are UUIDs of version 4 whose last 48 bits count up from a random start: unique in the process (and
    # between processes, by the 74 random bits before them) at a fraction of uuid.uuid4()'s cost.
    global _id_prefix, _id_counter
    first = str(uuid.uuid4())
    _id_prefix, _id_counter = first[:24], itertools.count(int(first[24:], 16))


_id_prefix = ""
_id_counter = itertools.count()
_new_id_series()
os.register_at_fork(after_in_child=_new_id_series)  # worker processes must not repeat their parent's ids


def _clean(text: str) -> str:
    # whatever a client sends must not be able to forge a second log line
    if text.isprintable():  # nearly always; what is not printable is a superset of what is escaped
        return text
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def loggable_target(scope: Scope) -> str:
    """The request target for a log line: the path as sent, the values of the API's query parameters as sent,
    every other value (and a bare word) replaced by ***."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    if not query:
        return _clean(path)
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        if name in LOGGED_PARAMETERS or not part:
            parts.append(part)
        else:
            parts.append(f"{name}=***" if sep else "***")
    return _clean(f"{path}?{'&'.join(parts)}")


def write_access_line(scope: Scope, status: int, sent: int, seconds: float, request_id: str) -> None:
    """The access line of one request: through the process's handler, in a batch (see ServiceHandler), when
    `configure_logging` set it up and nothing else listens; else as a record of the `service.access` logger."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _service_handler
    words = request_words(scope)
    if handler is not None and handler.alone():
        handler.write_access(words, status, sent, seconds, request_id)
    else:
        fields = access_fields(words, status, sent, seconds, request_id)
        logger.info(_ACCESS_MESSAGE, *_message_args(words, status, sent, seconds, request_id), extra={"fields": fields})


class RequestWords(NamedTuple):
    """What an access line says of the request itself, cleaned for a log: made once per distinct request, since
    pollers repeat the same request (see `request_words`)."""

    client: str
    method: str
    path: str  # the target as sent, secret-looking query values replaced by ***
    user_agent: str
    plain: str  # `client "METHOD target"`, as a plain line shows them


def request_words(scope: Scope) -> RequestWords:
    """The request's words for its access line, from a cache keyed by everything they are made of."""
    client = scope.get("client")
    user_agent = header(scope, b"user-agent")
    key = (
        client[0] if client else None,
        scope["method"],
        scope.get("raw_path"),
        scope["path"],
        scope["query_string"],
        user_agent,
    )
    words = _request_words.get(key)
    if words is None:
        if len(_request_words) >= _MAX_REQUEST_WORDS:
            _request_words.clear()
        host, method, path = _clean(client_host(scope)), _clean(scope["method"]), loggable_target(scope)
        agent = _clean((user_agent or b"").decode("latin-1"))
        words = _request_words[key] = RequestWords(host, method, path, agent, f'{host} "{method} {path}"')
    return words


# (client address, method, raw path, path, query string, user agent) -> the words of an access line
_request_words: dict[tuple[Any, ...], RequestWords] = {}
_MAX_REQUEST_WORDS = 4096


def access_fields(words: RequestWords, status: int, sent: int, seconds: float, request_id: str) -> dict[str, Any]:
    """What the access line says of a request: a record's `fields`, the keys of a JSON line."""
    return {
        "method": words.method,
        "path": words.path,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "client": words.client,
        "request_id": request_id,
        "bytes": sent,
        "user_agent": words.user_agent,
    }


_ACCESS_MESSAGE = '%s "%s %s" %d %.2fms %dB request_id=%s'


def _message_args(
    words: RequestWords, status: int, sent: int, seconds: float, request_id: str
) -> tuple[str, str, str, int, float, int, str]:
    return words.client, words.method, words.path, status, seconds * 1000, sent, request_id


# -- formats -------------------------------------------------------------------------------------------------


def _request_id(record: logging.LogRecord) -> str | None:
    # the record's own (set where it was written) or, while the request runs, the current one
    value = getattr(record, "request_id", None)
    return value if isinstance(value, str) else request_id_var.get()


class PlainFormatter(logging.Formatter):
    """`2026-11-28T09:14:03.512Z INFO service.access: <message>`; lines written during a request name its id."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{format_timestamp(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        request_id = _request_id(record)
        if request_id is not None and not hasattr(record, "fields"):
            line += f" request_id={request_id}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    @staticmethod
    def format_access(
        words: RequestWords, status: int, sent: int, seconds: float, request_id: str, created: float
    ) -> str:
        """The line `format` makes of the access record of this request (the fields a plain line shows only)."""
        return (
            f"{format_timestamp(created)} INFO {logger.name}: {words.plain} {status} {seconds * 1000:.2f}ms "
            f"{sent}B request_id={request_id}"
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the access line's fields, request_id, exc."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": format_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        elif (request_id := _request_id(record)) is not None:
            data["request_id"] = request_id
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()

    @staticmethod
    def format_access(
        words: RequestWords, status: int, sent: int, seconds: float, request_id: str, created: float
    ) -> str:
        """The line `format` makes of the access record of this request."""
        data = {"time": format_timestamp(created), "level": "info", "logger": logger.name}
        data["message"] = _ACCESS_MESSAGE % _message_args(words, status, sent, seconds, request_id)
        data.update(access_fields(words, status, sent, seconds, request_id))
        return orjson.dumps(data, default=str).decode()


class ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The process's one handler. Records are written as any StreamHandler writes them; access lines are kept as
    they come (the request's words, shared by repeated requests, and its numbers; not its scope, which would
    keep a thousand requests' memory alive between writes) and formatted and written together, at most
    `_FLUSH_SECONDS` later (or when `_MAX_PENDING` wait, at exit, or before any record).

    A record per request (a LogRecord, the formatter, a write and a flush) costs a good part of what a whole
    304 costs through uvicorn; formatted in a batch, the lines cost the requests less (docs/performance.md). The
    order of lines is kept: a record flushes the waiting access lines before it is written."""

    def __init__(self, stream: IO[str], formatter: PlainFormatter | JsonFormatter) -> None:
        super().__init__(stream)
        self.setFormatter(formatter)
        self._format_access = formatter.format_access
        self._pending: list[tuple[RequestWords, int, int, float, str, float]] = []
        self._solo = [self]

    def alone(self) -> bool:
        """Whether access lines may bypass logging: this is the root's only handler and nothing in between has any."""
        return logging.root.handlers == self._solo and not logger.handlers and not _service.handlers

    def write_access(self, words: RequestWords, status: int, sent: int, seconds: float, request_id: str) -> None:
        pending = self._pending
        pending.append((words, status, sent, seconds, request_id, time.time()))
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_later(_FLUSH_SECONDS, self.flush_access)
            except RuntimeError:  # no loop: write it now
                self.flush_access()
        elif len(pending) >= _MAX_PENDING:
            self.flush_access()

    def flush_access(self) -> None:
        if not self._pending:
            return
        self.acquire()
        try:
            entries, self._pending = self._pending, []
            format_access = self._format_access
            self.stream.write("\n".join([format_access(*entry) for entry in entries]) + self.terminator)
            self.flush()
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        self.flush_access()
        super().emit(record)

    def close(self) -> None:
        self.flush_access()
        super().close()


_FLUSH_SECONDS = 0.05  # an access line is written at most this long after its request ends
_MAX_PENDING = 2048  # access lines kept at most before a write, however many requests arrive meanwhile
_service = logging.getLogger("service")
_service_handler: ServiceHandler | None = None


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log line of the process (ours, uvicorn's, libraries') to `stream` in the configured format.

    Like `logging.basicConfig(force=True)`, it replaces the root logger's handlers; uvicorn's own access
    lines are switched off, so that each request is logged once (by us, unless `logging.access_log` is off)."""
    global _service_handler
    formatter = JsonFormatter() if settings.logging.format == "json" else PlainFormatter()
    handler = ServiceHandler(sys.stderr if stream is None else stream, formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    _service_handler = handler
    atexit.register(handler.flush_access)
    root.setLevel(logging.WARNING)  # libraries: warnings and worse
    level = settings.server.log_level.upper()
    _service.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(level)
    # Ours replaces uvicorn's access line, for good, and `access_log = false` means no access line at all, not
    # uvicorn's instead: uvicorn formats its line's arguments for every request whenever the logger has a handler
    # up its chain, even while the logger is disabled, and writing it as a record costs more again.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.disabled = True
    uvicorn_access.propagate = False
    return handler
