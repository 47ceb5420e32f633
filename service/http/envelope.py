"""The HTTP side of the envelope: the error codes, their statuses and messages, and the mapping of every failure
the layers below report (a refused parameter, a failed scan) to one of them. The shapes are service.shapes."""

from __future__ import annotations

import functools
from enum import Enum

import msgspec
from starlette.responses import Response
from starlette.types import Send

from service.query.params import QueryError
from service.shapes.envelope import BadRequest, Error, ParameterError, encode_ok
from service.source.failures import Failure

_JSON = "application/json"


class ErrorCode(Enum):
    """HTTP status (equal to the envelope's `code`) and message of each failure readers know."""

    BAD_REQUEST = (400, "请求参数错误")
    UNAUTHORIZED = (401, "未授权：缺少或无效的访问令牌")
    NOT_FOUND = (404, "Not Found")
    METHOD_NOT_ALLOWED = (405, "Method Not Allowed")
    TOO_MANY_REQUESTS = (429, "请求过于频繁，请稍后再试")
    INTERNAL = (500, "查询任务状态时发生内部错误")
    REDIS_UNAVAILABLE = (503, "Redis服务不可用，请稍后再试")
    TIMEOUT = (504, "查询超时，请稍后再试")
    TOO_MANY_STREAMS = (503, "事件流数量已达上限，请稍后再试")  # max_streams open; with Retry-After

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]


# How a scan that gave no snapshot is answered.
FAILURE_CODES = {
    Failure.TIMEOUT: ErrorCode.TIMEOUT,
    Failure.REDIS_UNAVAILABLE: ErrorCode.REDIS_UNAVAILABLE,
    Failure.INTERNAL: ErrorCode.INTERNAL,
}
# the first code of each status: an HTTP error of 503 is Redis' (TOO_MANY_STREAMS is the stream endpoint's own)
ERRORS_BY_STATUS: dict[int, ErrorCode] = {}
for _code in ErrorCode:
    ERRORS_BY_STATUS.setdefault(_code.status, _code)


def ok(data: msgspec.Struct, headers: dict[str, str] | None = None) -> Response:
    """A success envelope around `data` (a shape)."""
    return Response(encode_ok(data), media_type=_JSON, headers=headers)


def error(code: ErrorCode, message: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """An error envelope; `message` replaces the standard one where the caller has something precise to say."""
    return Response(error_body(code, message), status_code=code.status, media_type=_JSON, headers=headers)


@functools.lru_cache(maxsize=256)
def error_body(code: ErrorCode, message: str | None = None) -> bytes:
    """The error envelope's bytes, made once per code and message: refusals (401, 429) are sent from these, so
    that refusing a flood costs less than answering it."""
    return msgspec.json.encode(Error(code=code.status, message=message or code.message))


async def send_error(send: Send, code: ErrorCode, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """An error envelope as plain ASGI sends, with no Response object."""
    body = error_body(code)
    start: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": code.status, "headers": [*start, *headers]})
    await send({"type": "http.response.body", "body": body})


def bad_request(exc: QueryError) -> Response:
    """The 400 envelope naming the refused parameter, in the message and, for programs, in `data`."""
    code = ErrorCode.BAD_REQUEST
    shape = BadRequest(
        message=f"{code.message}: {exc}",
        data=ParameterError(exc.parameter, exc.value, exc.accepted),
    )
    return Response(msgspec.json.encode(shape), status_code=code.status, media_type=_JSON)
