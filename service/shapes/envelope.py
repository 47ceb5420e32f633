"""The `{code, message, success, data}` envelope of every JSON answer, success and failure."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

import msgspec

T = TypeVar("T")


class Ok(msgspec.Struct, Generic[T], kw_only=True):
    """A success: `code` 0, `message` "ok", the answer in `data`."""

    code: Literal[0] = 0
    message: Literal["ok"] = "ok"
    success: Literal[True] = True
    data: T


class Error(msgspec.Struct, kw_only=True):
    """A failure: the HTTP status repeated in `code`, a human-readable message, no data."""

    code: int
    message: str
    success: Literal[False] = False
    data: None = None


class ParameterError(msgspec.Struct, forbid_unknown_fields=True):
    """Which query parameter was refused, for programs."""

    parameter: str  # the query parameter's name
    value: str  # the value refused, as sent
    accepted: str  # what the parameter accepts, in words


class BadRequest(msgspec.Struct, kw_only=True):
    """A query parameter with a value that is not accepted; `data` names it."""

    code: Literal[400] = 400
    message: str
    success: Literal[False] = False
    data: ParameterError


# Every success body starts with this; bodies rendered ahead of time are joined after it.
OK_PREFIX = msgspec.json.encode(Ok(data=None))[: -len(b"null}")]


def ok_body(data: bytes) -> bytes:
    """The success envelope around the already encoded `data`."""
    return b"".join((OK_PREFIX, data, b"}"))


def encode_ok(data: object) -> bytes:
    """The success envelope around `data` (a shape)."""
    return msgspec.json.encode(Ok(data=data))
