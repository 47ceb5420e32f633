"""Request ids and the access log: one line per request, plain or JSON, and how the process's logging is set up.

Every request gets an id (its `X-Request-ID` when that is a sane token, else a new UUID) that is returned in
the response, attached to every log line written while the request runs, and named in its access line."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.responses import ErrorCode, error
from service.security import client_host, header
from service.settings import Settings

logger = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._~:/+=@-]{1,128}")
# query parameters whose values must never reach a log, should a client put a credential there
_SECRET_PARAMS = frozenset({"token", "access_token", "api_key", "apikey", "key", "password", "secret"})
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def accept_request_id(value: bytes | None) -> str:
    """The client's request id when it is a plain token of at most 128 characters, else a new UUID."""
    if value:
        text = value.decode("latin-1")
        if _REQUEST_ID.fullmatch(text):
            return text
    return str(uuid.uuid4())


def _clean(text: str) -> str:
    # whatever a client sends must not be able to forge a second log line
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def loggable_target(scope: Scope) -> str:
    """The request target for a log line: the path as sent, secret-looking query values replaced by ***."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    if not query:
        return _clean(path)
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}=***" if sep and name.lower() in _SECRET_PARAMS else part)
    return _clean(f"{path}?{'&'.join(parts)}")


class RequestLog:
    """Pure ASGI middleware: the request id, the access line, and the last resort for unhandled errors.

    An exception that reaches here before the response started becomes the 500 envelope (logged once with
    its stack trace, which never reaches the body); inner middleware has then already counted it."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accept_request_id(header(scope, b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        context = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0
        sent = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "unhandled error on %s %s", scope["method"], loggable_target(scope), extra={"request_id": request_id}
            )
            if status:
                raise  # the response has begun: all that is left is to drop the connection
            await error(ErrorCode.INTERNAL)(scope, receive, send_with_id)
        finally:
            if self.access_log:
                self._log(scope, status, sent, time.perf_counter() - started, request_id)
            request_id_var.reset(context)

    @staticmethod
    def _log(scope: Scope, status: int, sent: int, seconds: float, request_id: str) -> None:
        fields: dict[str, Any] = {
            "method": _clean(scope["method"]),
            "path": loggable_target(scope),
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "client": _clean(client_host(scope)),
            "request_id": request_id,
            "bytes": sent,
            "user_agent": _clean((header(scope, b"user-agent") or b"").decode("latin-1")),
        }
        logger.info(
            '%s "%s %s" %d %.2fms %dB request_id=%s',
            fields["client"],
            fields["method"],
            fields["path"],
            status,
            fields["duration_ms"],
            sent,
            request_id,
            extra={"fields": fields},
        )


# -- formats -------------------------------------------------------------------------------------------------


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _request_id(record: logging.LogRecord) -> str | None:
    # the record's own (set where it was written) or, while the request runs, the current one
    value = getattr(record, "request_id", None)
    return value if isinstance(value, str) else request_id_var.get()


class PlainFormatter(logging.Formatter):
    """`2026-11-28T09:14:03.512Z INFO service.access: <message>`; lines written during a request name its id."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        request_id = _request_id(record)
        if request_id is not None and not hasattr(record, "fields"):
            line += f" request_id={request_id}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the access line's fields, request_id, exc."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _timestamp(record),
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


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log line of the process (ours, uvicorn's, libraries') to `stream` in the configured format.

    Like `logging.basicConfig(force=True)`, it replaces the root logger's handlers; uvicorn's own access
    lines are switched off when ours are on, so that each request is logged once."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if settings.logging.format == "json" else PlainFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and worse
    level = settings.server.log_level.upper()
    logging.getLogger("service").setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = settings.logging.access_log
    return handler
