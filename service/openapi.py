"""The OpenAPI 3.1 description of every endpoint, built from the settings in effect (auth and limits change
what a client may get back). `OPERATIONS` lists the endpoints; a test checks it against the app's routes.

To describe a new endpoint: add its data schema to `SCHEMAS` if it has one, and an `Operation` to
`OPERATIONS` (its access level decides the 401/429 answers and the security requirement)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from service import __version__
from service.responses import ErrorCode
from service.routes import API_PREFIX
from service.settings import Settings

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"


class Access(Enum):
    API = "api"  # bearer token (when configured) and rate limit
    PUBLIC = "public"  # rate limit only
    PROBE = "probe"  # neither: health checks


def ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def envelope(data: dict[str, Any]) -> dict[str, Any]:
    """The success envelope `{code: 0, message: "ok", success: true, data}` around `data`'s schema."""
    return {
        "type": "object",
        "required": ["code", "message", "success", "data"],
        "properties": {
            "code": {"const": 0},
            "message": {"const": "ok"},
            "success": {"const": True},
            "data": data,
        },
    }


def json_response(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "headers": _headers(headers), "content": {JSON: {"schema": schema}}}


def _headers(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    # every response carries these, errors included
    return {
        "X-Request-ID": ref("RequestId", "headers"),
        "X-Content-Type-Options": ref("NoSniff", "headers"),
        **(extra or {}),
    }


_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339 UTC with milliseconds"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "FileEntry": {
        "type": "object",
        "description": "One file of the upload, as the producer stores it.",
        "required": ["path", "status", "operate"],
        "properties": {
            "path": {"type": "string"},
            "status": {"type": "string", "description": "pending, processing, completed, unsupported or failed"},
            "operate": {"type": "string", "description": "add, modify, delete or rename"},
        },
    },
    "Task": {
        "type": "object",
        "required": [
            "taskId",
            "clientId",
            "status",
            "process",
            "totalProgress",
            "startTime",
            "lastUpdateTime",
            "fileList",
        ],
        "properties": {
            "taskId": {"type": "string", "description": "the key's suffix: the upload's X-Request-ID"},
            "clientId": {"type": "string", "description": "empty unless the producer writes one"},
            "status": {"type": "string", "description": "equal to process"},
            "process": {"type": "string", "description": "one of the configured running statuses"},
            "totalProgress": {"type": "integer", "minimum": 0, "maximum": 100},
            "startTime": _TIME,
            "lastUpdateTime": _TIME,
            "estimatedCompletionTime": {**_TIME, "description": "omitted until a progress rate has been observed"},
            "fileList": {"type": "array", "items": ref("FileEntry")},
        },
    },
    "RunningTasks": {
        "type": "object",
        "required": ["totalTasks", "tasks"],
        "properties": {
            "totalTasks": {"type": "integer", "minimum": 0},
            "tasks": {"type": "array", "items": ref("Task"), "description": "newest start first"},
        },
    },
    "CacheStats": {
        "type": "object",
        "required": ["cacheEnabled", "snapshot", "lastRefresh", "counters", "job", "settings"],
        "properties": {
            "cacheEnabled": {"type": "boolean"},
            "snapshot": {
                "type": ["object", "null"],
                "required": ["generation", "builtAt", "ageSeconds", "ttlSeconds", "stale", "taskCount", "etag"],
                "properties": {
                    "generation": {"type": "integer", "minimum": 1},
                    "builtAt": _TIME,
                    "ageSeconds": {"type": "number", "minimum": 0},
                    "ttlSeconds": {"type": "number"},
                    "stale": {"type": "boolean"},
                    "taskCount": {"type": "integer", "minimum": 0},
                    "etag": {"type": "string"},
                    "bodyBytes": {"type": "integer", "minimum": 0},
                },
            },
            "lastRefresh": {
                "type": ["object", "null"],
                "required": ["startedAt", "durationMs", "trigger", "error"],
                "properties": {
                    "startedAt": _TIME,
                    "durationMs": {"type": "number", "minimum": 0},
                    "trigger": {"enum": ["job", "startup", "request"]},
                    "error": {"type": ["string", "null"]},
                },
                "additionalProperties": {"type": "number"},
            },
            "counters": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            "job": {
                "type": "object",
                "required": ["running", "intervalSeconds", "nextRun"],
                "properties": {
                    "running": {"type": "boolean"},
                    "intervalSeconds": {"type": "number"},
                    "nextRun": {"type": ["string", "null"]},
                },
            },
            "settings": {"type": "object", "description": "the settings in effect; secrets shown as ***"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Ready": {
        "type": "object",
        "required": ["ready", "reason"],
        "properties": {"ready": {"const": True}, "reason": {"type": "string"}},
    },
    "Error": {
        "type": "object",
        "description": "Every failure: the HTTP status repeated in `code`, a human-readable message, no data.",
        "required": ["code", "message", "success", "data"],
        "properties": {
            "code": {"enum": sorted(code.status for code in ErrorCode)},
            "message": {"type": "string"},
            "success": {"const": False},
            "data": {"type": "null"},
        },
    },
}


def _error_response(code: ErrorCode, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = {"allOf": [ref("Error"), {"properties": {"code": {"const": code.status}}}]}
    return json_response(f"{description} (message: {code.message})", schema, headers)


RESPONSES: dict[str, dict[str, Any]] = {
    "Unauthorized": _error_response(
        ErrorCode.UNAUTHORIZED,
        "No valid bearer token",
        {"WWW-Authenticate": {"description": 'Bearer realm="running-tasks"', "schema": {"type": "string"}}},
    ),
    "TooManyRequests": _error_response(
        ErrorCode.TOO_MANY_REQUESTS,
        "The client's rate limit is used up",
        {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}},
    ),
    "InternalError": _error_response(ErrorCode.INTERNAL, "An unexpected error; the details are in the log only"),
    "RedisUnavailable": _error_response(ErrorCode.REDIS_UNAVAILABLE, "Redis cannot be reached"),
    "Timeout": _error_response(ErrorCode.TIMEOUT, "The scan exceeded its time budget"),
}

HEADERS: dict[str, dict[str, Any]] = {
    "RequestId": {
        "description": "The request's id: the client's X-Request-ID when it is a plain token, else a new UUID.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~:/+=@-]{1,128}$"},
    },
    "NoSniff": {"description": "Always nosniff.", "schema": {"const": "nosniff"}},
    "ETag": {"description": "Strong tag of the snapshot's body.", "schema": {"type": "string"}},
    "SnapshotGeneration": {"description": "Generation of the snapshot served.", "schema": {"type": "string"}},
}

PARAMETERS: dict[str, dict[str, Any]] = {
    "RequestId": {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Returned in the response and written in every log line of the request; a value that is "
        "not 1-128 characters of letters, digits and ._~:/+=@- is replaced by a new UUID.",
        "schema": {"type": "string"},
    },
    "IfNoneMatch": {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": "ETags of a previous answer; 304 when the snapshot served still has one of them.",
        "schema": {"type": "string"},
    },
}


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    operation_id: str
    summary: str
    responses: dict[str, Any]
    access: Access = Access.API
    description: str = ""
    parameters: tuple[dict[str, Any], ...] = ()
    tags: tuple[str, ...] = field(default=("tasks",))


_SNAPSHOT_HEADERS = {"ETag": ref("ETag", "headers"), "X-Snapshot-Generation": ref("SnapshotGeneration", "headers")}

OPERATIONS: list[Operation] = [
    Operation(
        f"{API_PREFIX}/running",
        "get",
        "listRunningTasks",
        "The running tasks, newest start first",
        {
            "200": json_response("The running tasks", envelope(ref("RunningTasks")), _SNAPSHOT_HEADERS),
            "304": {
                "description": "The snapshot still has an ETag of If-None-Match",
                "headers": _headers(_SNAPSHOT_HEADERS),
            },
            "503": ref("RedisUnavailable", "responses"),
            "504": ref("Timeout", "responses"),
        },
        description="Served from the background snapshot while it is fresh; otherwise a live scan (shared by "
        "concurrent requests) answers.",
        parameters=(ref("IfNoneMatch", "parameters"),),
    ),
    Operation(
        f"{API_PREFIX}/cache-stats",
        "get",
        "getCacheStats",
        "The snapshot, the last refresh, counters, the refresh job and the settings in effect",
        {"200": json_response("The cache's state", envelope(ref("CacheStats")))},
    ),
    Operation(
        "/metrics",
        "get",
        "getMetrics",
        "Prometheus metrics",
        {
            "200": {
                "description": "Prometheus text format, or OpenMetrics when the Accept header asks for it",
                "headers": _headers(),
                "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                },
            }
        },
        tags=("operations",),
    ),
    Operation(
        "/openapi.json",
        "get",
        "getOpenApi",
        "This document",
        {"200": json_response("The OpenAPI description", {"type": "object"})},
        access=Access.PUBLIC,
        tags=("operations",),
    ),
    Operation(
        "/healthz",
        "get",
        "getHealth",
        "Liveness: the process answers",
        {"200": json_response("Alive", envelope(ref("Health")))},
        access=Access.PROBE,
        tags=("operations",),
    ),
    Operation(
        "/readyz",
        "get",
        "getReadiness",
        "Readiness: a fresh snapshot exists (or, without the cache, Redis answers PING)",
        {
            "200": json_response("Ready", envelope(ref("Ready"))),
            "503": ref("RedisUnavailable", "responses"),
        },
        access=Access.PROBE,
        tags=("operations",),
    ),
]


def build_document(settings: Settings, operations: list[Operation] | None = None) -> dict[str, Any]:
    """The OpenAPI document for an app running with `settings`."""
    auth = bool(settings.auth.tokens)
    limited = settings.rate_limit.requests_per_second > 0
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS if operations is None else operations:
        responses = dict(op.responses)
        responses.setdefault("500", ref("InternalError", "responses"))
        if limited and op.access is not Access.PROBE:
            responses["429"] = ref("TooManyRequests", "responses")
        secured = auth and op.access is Access.API
        if secured:
            responses["401"] = ref("Unauthorized", "responses")
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": list(op.tags),
            "parameters": [ref("RequestId", "parameters"), *op.parameters],
            "responses": dict(sorted(responses.items())),
            "security": [{"bearerAuth": []}] if secured else [],
        }
        if op.description:
            operation["description"] = op.description
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Running tasks service",
            "version": __version__,
            "description": "The codebase embedder's running tasks, served from a background-refreshed Redis "
            "snapshot. Every JSON answer is the envelope {code, message, success, data}.",
        },
        "tags": [
            {"name": "tasks", "description": "The embedder's tasks"},
            {"name": "operations", "description": "Health, readiness, metrics and this document"},
        ],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "headers": HEADERS,
            "parameters": PARAMETERS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the tokens of [auth] tokens (SERVICE__AUTH__TOKENS)",
                }
            },
        },
    }
