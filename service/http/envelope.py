"""The `{code, message, success, data}` envelope, the error codes, and orjson rendering."""

from __future__ import annotations

from enum import Enum
from typing import Any

import orjson
from starlette.responses import JSONResponse, Response


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


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

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]


def ok_body_prefix(total: int) -> bytes:
    """The success envelope of the running list up to the opening bracket of `tasks`."""
    return b'{"code":0,"message":"ok","success":true,"data":{"totalTasks":%d,"tasks":[' % total


def ok(data: Any, headers: dict[str, str] | None = None) -> Response:
    return OrjsonResponse({"code": 0, "message": "ok", "success": True, "data": data}, headers=headers)


def error(
    code: ErrorCode, message: str | None = None, headers: dict[str, str] | None = None, data: Any = None
) -> Response:
    """An error envelope; `message` replaces the standard one where the caller has something precise to say,
    `data` carries details a program can act on (e.g. which query parameter was refused)."""
    body = {"code": code.status, "message": message or code.message, "success": False, "data": data}
    return OrjsonResponse(body, status_code=code.status, headers=headers)
