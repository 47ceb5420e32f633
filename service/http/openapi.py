"""The OpenAPI 3.1 description of every endpoint, built from the settings in effect (auth and limits change
what a client may get back, `running_statuses` what the status filters accept). `OPERATIONS` lists the
endpoints; a test checks it against the app's routes.

To describe a new endpoint: add its data schema to `schemas()` if it has one, its query parameters to
`parameters()`, and an `Operation` to `OPERATIONS` (its access level decides the 401/429 answers and the
security requirement). Enumerations and bounds come from the modules that enforce them, so the document cannot
drift from the code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from service import __version__
from service.domain.vocabulary import FILE_OPERATES, FILE_STATUSES, OUTCOME_ALIASES, OUTCOMES
from service.http.envelope import ErrorCode
from service.http.routes import API_PREFIX
from service.query.finished import DEFAULT_FINISHED_PAGE_SIZE, FINISHED_SORT_KEYS
from service.query.params import DEFAULT_PAGE_SIZE, EPOCH_MS_MAX_DIGITS, MAX_PAGE, MAX_PAGE_SIZE, MAX_VALUES
from service.query.project import FILE_LIST_MODES, TASK_FIELDS
from service.query.running import SORT_KEYS
from service.query.stats import PERCENTILES, WINDOWS_MINUTES
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
_COUNT = {"type": "integer", "minimum": 0}


def _counts(known: Sequence[str], description: str, closed: bool = False) -> dict[str, Any]:
    """An object of counts: every `known` name present; other names only where `closed` is False."""
    return {
        "type": "object",
        "description": description,
        "required": list(known),
        "properties": {name: _COUNT for name in known},
        "additionalProperties": False if closed else _COUNT,
    }


def _task_properties(running_statuses: Sequence[str]) -> dict[str, Any]:
    # one definition for the full and the projected task, in the contract's order
    return {
        "taskId": {"type": "string", "description": "the key's suffix: the upload's X-Request-ID"},
        "clientId": {"type": "string", "description": "empty unless the producer writes one"},
        "status": {"enum": list(running_statuses), "description": "equal to process"},
        "process": {"enum": list(running_statuses), "description": "one of the configured running statuses"},
        "totalProgress": {"type": "integer", "minimum": 0, "maximum": 100},
        "startTime": _TIME,
        "lastUpdateTime": _TIME,
        "estimatedCompletionTime": {**_TIME, "description": "omitted until a progress rate has been observed"},
        "stalled": {
            "type": "boolean",
            "description": "true when the task's value has not changed for stall_after seconds, measured from "
            "lastUpdateTime",
        },
        "fileList": {"type": "array", "items": ref("FileEntry")},
    }


def _distribution() -> dict[str, Any]:
    figures = [f"p{p}" for p in PERCENTILES] + ["mean"]
    return {
        "type": "object",
        "description": "Percentiles (linear interpolation between closest ranks) and mean, in seconds; null "
        "without runs.",
        "required": ["count", *figures],
        "properties": {"count": _COUNT, **{name: {"type": ["number", "null"]} for name in figures}},
        "oneOf": [
            {"properties": {"count": {"const": 0}, **{name: {"type": "null"} for name in figures}}},
            {"properties": {"count": {"minimum": 1}, **{name: {"type": "number", "minimum": 0} for name in figures}}},
        ],
    }


def _throughput_window(minutes: int) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["windowMinutes", "finished", "perMinute", "coveredMinutes", "complete"],
        "properties": {
            "windowMinutes": {"const": minutes},
            "finished": {**_COUNT, "description": "runs whose endTime is within the window"},
            "perMinute": {"type": "number", "minimum": 0},
            "coveredMinutes": {"type": "number", "minimum": 0, "maximum": minutes},
            "complete": {
                "type": "boolean",
                "description": "false while the history covers less than the window or evicted runs that ended "
                "within it: the figure is then a lower bound",
            },
        },
    }


def schemas(settings: Settings) -> dict[str, dict[str, Any]]:
    """The data schemas; the task status enumerations follow `running_tasks.running_statuses`."""
    statuses = settings.running_tasks.running_statuses
    task = _task_properties(statuses)
    return {
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
        "FileSummary": {
            "type": "object",
            "description": "A task's files counted (fileList=summary).",
            "required": ["total", "byStatus", "byOperate"],
            "properties": {
                "total": _COUNT,
                "byStatus": _counts(FILE_STATUSES, "files per status; other statuses are added when they occur"),
                "byOperate": _counts(FILE_OPERATES, "files per operation; other operations are added when they occur"),
            },
        },
        "Task": {
            "type": "object",
            "description": "A running task, complete: what the unfiltered list and a task by id without `fields` or "
            "`fileList` serve.",
            "required": [name for name in TASK_FIELDS if name != "estimatedCompletionTime"],
            "properties": task,
            "additionalProperties": False,
        },
        "ProjectedTask": {
            "type": "object",
            "description": "A running task as a query shapes it: every field of Task unless `fields` lists some "
            "(then only those, in the contract's order); the file list full, replaced by `fileSummary` "
            "(fileList=summary) or left out (fileList=none, or `fields` without fileList).",
            "properties": {**task, "fileSummary": ref("FileSummary")},
            "additionalProperties": False,
            "not": {"required": ["fileList", "fileSummary"]},
        },
        "RunningTasks": {
            "type": "object",
            "description": "The running tasks that match, newest start first unless `sort` says otherwise. "
            "`page`, `pageSize` and `totalPages` are present exactly when `page` or `pageSize` is given.",
            "required": ["totalTasks", "tasks"],
            "properties": {
                "totalTasks": {**_COUNT, "description": "every match, not only this page"},
                "page": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                "pageSize": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                "totalPages": {**_COUNT, "description": "ceil(totalTasks / pageSize); 0 when nothing matches"},
                "tasks": {"type": "array", "items": ref("ProjectedTask")},
            },
            "additionalProperties": False,
            "dependentRequired": {
                "page": ["pageSize", "totalPages"],
                "pageSize": ["page", "totalPages"],
                "totalPages": ["page", "pageSize"],
            },
        },
        "FinishedTask": {
            "type": "object",
            "description": "One run this service saw leave the running state.",
            "required": [
                "taskId",
                "clientId",
                "outcome",
                "status",
                "totalProgress",
                "fileCount",
                "startTime",
                "endTime",
                "durationMs",
                "lastSeenRunningTime",
                "detectedTime",
            ],
            "properties": {
                "taskId": {"type": "string"},
                "clientId": {"type": "string"},
                "outcome": {"enum": list(OUTCOMES)},
                "status": {
                    "type": "string",
                    "description": "the final value's; for a vanished run the last running one",
                },
                "totalProgress": {"type": "integer", "minimum": 0, "maximum": 100},
                "fileCount": _COUNT,
                "startTime": _TIME,
                "endTime": {
                    **_TIME,
                    "description": "the finished value's write time; for a vanished run the last time a scan read it "
                    "running",
                },
                "durationMs": {**_COUNT, "description": "endTime - startTime, never negative"},
                "lastSeenRunningTime": _TIME,
                "detectedTime": {**_TIME, "description": "when the scan that found it no longer running ended"},
            },
            "additionalProperties": False,
        },
        "FinishedTasks": {
            "type": "object",
            "description": "One page of the finished runs that match, newest end first unless `sort` says otherwise.",
            "required": ["totalTasks", "page", "pageSize", "totalPages", "historySince", "historySize", "tasks"],
            "properties": {
                "totalTasks": {**_COUNT, "description": "every match, not only this page"},
                "page": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                "pageSize": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                "totalPages": {**_COUNT, "description": "ceil(totalTasks / pageSize); 0 when nothing matches"},
                "historySince": {**_TIME, "description": "when this service started: the history is in memory"},
                "historySize": {"type": "integer", "description": "runs kept at most (history_size)"},
                "tasks": {"type": "array", "items": ref("FinishedTask")},
            },
            "additionalProperties": False,
        },
        "TaskStats": {
            "type": "object",
            "description": "Figures as of the current snapshot (asOf is its build time).",
            "required": ["asOf", "snapshotGeneration", "running", "finished", "progressRate"],
            "properties": {
                "asOf": _TIME,
                "snapshotGeneration": {"type": "integer", "minimum": 1},
                "running": {
                    "type": "object",
                    "required": ["total", "byStatus", "stalled", "stallAfterSeconds"],
                    "properties": {
                        "total": _COUNT,
                        "byStatus": _counts(statuses, "every configured running status", closed=True),
                        "stalled": _COUNT,
                        "stallAfterSeconds": {"type": "integer", "minimum": 0},
                    },
                },
                "finished": {
                    "type": "object",
                    "required": [
                        "historySince",
                        "historySize",
                        "kept",
                        "evicted",
                        "byOutcome",
                        "throughput",
                        "durationSeconds",
                    ],
                    "properties": {
                        "historySince": _TIME,
                        "historySize": {"type": "integer"},
                        "kept": {**_COUNT, "description": "runs the history still holds"},
                        "evicted": {**_COUNT, "description": "runs the bound has dropped"},
                        "byOutcome": _counts(
                            OUTCOMES, "runs since the service started, evicted ones included", closed=True
                        ),
                        "throughput": {
                            "type": "object",
                            "required": [f"last{m}m" for m in WINDOWS_MINUTES],
                            "properties": {f"last{m}m": _throughput_window(m) for m in WINDOWS_MINUTES},
                            "additionalProperties": False,
                        },
                        "durationSeconds": {
                            "type": "object",
                            "required": ["unit", "over", "all", "byOutcome"],
                            "properties": {
                                "unit": {"const": "s"},
                                "over": {"type": "string"},
                                "all": ref("Distribution"),
                                "byOutcome": {
                                    "type": "object",
                                    "required": list(OUTCOMES),
                                    "properties": {outcome: ref("Distribution") for outcome in OUTCOMES},
                                    "additionalProperties": False,
                                },
                            },
                        },
                    },
                },
                "progressRate": {
                    "type": "object",
                    "description": "Per running task, progress gained per minute from its first observed progress to "
                    "its latest change; mean and median over the tasks that have such a rate.",
                    "required": ["unit", "over", "tasks", "mean", "median"],
                    "properties": {
                        "unit": {"const": "%/min"},
                        "over": {"type": "string"},
                        "tasks": _COUNT,
                        "mean": {"type": ["number", "null"]},
                        "median": {"type": ["number", "null"]},
                    },
                },
            },
        },
        "Distribution": _distribution(),
        "CacheStats": {
            "type": "object",
            "required": ["cacheEnabled", "snapshot", "lastRefresh", "counters", "job", "settings", "queryCache"],
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
                        "taskCount": _COUNT,
                        "etag": {"type": "string"},
                        "bodyBytes": _COUNT,
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
                "counters": {"type": "object", "additionalProperties": _COUNT},
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
                "queryCache": {
                    "type": "object",
                    "description": "The LRU of rendered query answers (query_cache_size, query_cache_bytes) and the "
                    "finished-task history.",
                    "required": [
                        "entries",
                        "bytes",
                        "maxEntries",
                        "maxBytes",
                        "hits",
                        "misses",
                        "evictions",
                        "history",
                    ],
                    "properties": {
                        "entries": _COUNT,
                        "bytes": _COUNT,
                        "maxEntries": _COUNT,
                        "maxBytes": _COUNT,
                        "hits": _COUNT,
                        "misses": _COUNT,
                        "evictions": _COUNT,
                        "history": {
                            "type": "object",
                            "required": ["kept", "size", "version"],
                            "properties": {"kept": _COUNT, "size": {"type": "integer"}, "version": _COUNT},
                        },
                    },
                },
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
            "description": "Every failure but a refused query parameter: the HTTP status repeated in `code`, a "
            "human-readable message, no data.",
            "required": ["code", "message", "success", "data"],
            "properties": {
                "code": {"enum": sorted(code.status for code in ErrorCode if code is not ErrorCode.BAD_REQUEST)},
                "message": {"type": "string"},
                "success": {"const": False},
                "data": {"type": "null"},
            },
        },
        "BadRequest": {
            "type": "object",
            "description": "A query parameter with a value that is not accepted; `data` names it for programs.",
            "required": ["code", "message", "success", "data"],
            "properties": {
                "code": {"const": ErrorCode.BAD_REQUEST.status},
                "message": {
                    "type": "string",
                    "pattern": f"^{ErrorCode.BAD_REQUEST.message}: ",
                    "description": f"{ErrorCode.BAD_REQUEST.message}: <parameter>: '<value>' is not accepted; "
                    "expected <accepted>",
                },
                "success": {"const": False},
                "data": ref("ParameterError"),
            },
        },
        "ParameterError": {
            "type": "object",
            "required": ["parameter", "value", "accepted"],
            "properties": {
                "parameter": {"type": "string", "description": "the query parameter's name"},
                "value": {"type": "string", "description": "the value refused, as sent"},
                "accepted": {"type": "string", "description": "what the parameter accepts, in words"},
            },
            "additionalProperties": False,
        },
        "Instant": {
            "description": "An RFC 3339 time (2026-11-28T01:02:03Z, 2026-11-28T09:02:03.250+08:00), a date alone (its "
            f"midnight UTC) or epoch milliseconds (1 to {EPOCH_MS_MAX_DIGITS} digits). A time without an offset is "
            "read as UTC; an unencoded `+` in an offset arrives as a space and is read back as `+`.",
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "string", "format": "date"},
                {"type": "string", "pattern": f"^[0-9]{{1,{EPOCH_MS_MAX_DIGITS}}}$"},
            ],
        },
    }


def _error_response(code: ErrorCode, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = {"allOf": [ref("Error"), {"properties": {"code": {"const": code.status}}}]}
    return json_response(f"{description} (message: {code.message})", schema, headers)


_SNAPSHOT_HEADERS = {"ETag": ref("ETag", "headers"), "X-Snapshot-Generation": ref("SnapshotGeneration", "headers")}

RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": json_response(
        "A query parameter has a value that is not accepted (a parameter that takes one value given twice, a time "
        "range whose end is not after its start, a sort key given twice included)",
        ref("BadRequest"),
    ),
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
    "NotModified": {
        "description": "The answer still has an ETag of If-None-Match",
        "headers": _headers(_SNAPSHOT_HEADERS),
    },
}

HEADERS: dict[str, dict[str, Any]] = {
    "RequestId": {
        "description": "The request's id: the client's X-Request-ID when it is a plain token, else a new UUID.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~:/+=@-]{1,128}$"},
    },
    "NoSniff": {"description": "Always nosniff.", "schema": {"const": "nosniff"}},
    "ETag": {"description": "Strong tag of the answer.", "schema": {"type": "string"}},
    "SnapshotGeneration": {"description": "Generation of the snapshot served.", "schema": {"type": "string"}},
}


def _list_parameter(name: str, items: dict[str, Any], description: str) -> dict[str, Any]:
    """A repeatable, comma-separated query parameter (`a,b` or `a&name=b`, the same query)."""
    if "enum" in items:
        items = {"enum": [*items["enum"], ""]}  # `a,,b` and `a,` are `a,b` and `a`
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"{description} Several values: comma-separated or the parameter repeated; empty items are "
        f"ignored; at most {MAX_VALUES} items; an empty value counts as not given.",
        "allowEmptyValue": True,
        "style": "form",
        "explode": False,
        "schema": {"type": "array", "items": items, "maxItems": MAX_VALUES},
    }


def _query_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"{description} Given once; an empty value counts as not given.",
        "allowEmptyValue": True,
        "schema": schema,
    }


def _sort_parameter(keys: Sequence[str], default: str) -> dict[str, Any]:
    return _list_parameter(
        "sort",
        {"enum": [f"{sign}{key}" for key in keys for sign in ("", "-", "+")]},
        f"Sort keys, the first one leads; a `-` prefix for descending (`+` or none: ascending); each key at most "
        f"once. Ties keep the default order ({default}), so pages are stable.",
    )


def _range_parameters(field_name: str, prefix: str) -> dict[str, dict[str, Any]]:
    after, before = f"{prefix}After", f"{prefix}Before"
    return {
        after[0].upper() + after[1:]: _query_parameter(
            after, ref("Instant"), f"Only tasks whose {field_name} is at or after this time."
        ),
        before[0].upper() + before[1:]: _query_parameter(
            before, ref("Instant"), f"Only tasks whose {field_name} is before this time; later than {after} if both."
        ),
    }


def parameters(settings: Settings) -> dict[str, dict[str, Any]]:
    """The reusable parameters; the running status filter follows `running_tasks.running_statuses`."""
    statuses = settings.running_tasks.running_statuses
    outcomes = [*OUTCOMES, *OUTCOME_ALIASES]
    return {
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
            "description": "ETags of a previous answer; 304 when the answer would still have one of them (never "
            "for an answer a live scan produced).",
            "schema": {"type": "string"},
        },
        "TaskId": {
            "name": "task_id",
            "in": "path",
            "required": True,
            "description": "The task's id (the key's suffix), percent-encoded; any character, `/` included.",
            "schema": {"type": "string"},
        },
        "ClientId": _list_parameter(
            "clientId",
            {"type": "string", "pattern": "^[^,]*$"},
            "Only tasks of these client ids (exact match).",
        ),
        "RunningStatus": _list_parameter(
            "status", {"enum": list(statuses)}, "Only tasks in these running statuses (running_statuses)."
        ),
        **_range_parameters("startTime", "started"),
        **_range_parameters("lastUpdateTime", "updated"),
        "Stalled": _query_parameter(
            "stalled", {"type": "boolean"}, "Only stalled tasks (true) or only the others (false); in any case."
        ),
        "RunningSort": _sort_parameter(tuple(SORT_KEYS), "newest startTime first, then taskId"),
        "Page": _query_parameter(
            "page",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            "Page number, from 1; a page past the last one has no tasks.",
        ),
        "PageSize": _query_parameter(
            "pageSize",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
            f"Tasks per page; {DEFAULT_PAGE_SIZE} when only `page` is given. Without page and pageSize the list "
            "is not paged.",
        ),
        "Fields": _list_parameter(
            "fields",
            {"enum": list(TASK_FIELDS)},
            "Only these task fields, in the contract's order; without `fileList` among them the file list is "
            "left out unless the fileList parameter asks for it.",
        ),
        "FileList": _query_parameter(
            "fileList",
            {"enum": list(FILE_LIST_MODES)},
            "The file part of each task: the list (full, the default), `fileSummary` counts (summary) or nothing "
            "(none).",
        ),
        "Outcome": _list_parameter(
            "status", {"enum": outcomes}, "Only runs with these outcomes (`complete` is the same as `completed`)."
        ),
        **_range_parameters("endTime", "ended"),
        "FinishedSort": _sort_parameter(tuple(FINISHED_SORT_KEYS), "newest endTime first"),
        "FinishedPage": _query_parameter(
            "page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "Page number, from 1."
        ),
        "FinishedPageSize": _query_parameter(
            "pageSize",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
            f"Runs per page (default {DEFAULT_FINISHED_PAGE_SIZE}): this list is always paged.",
        ),
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


def _params(*names: str) -> tuple[dict[str, str], ...]:
    return tuple(ref(name, "parameters") for name in names)


def _answers(description: str, data: dict[str, Any], more: dict[str, Any] | None = None) -> dict[str, Any]:
    """The responses of an endpoint answered from the snapshot: 200 with its ETag, 304, 503, 504 and `more`."""
    return {
        "200": json_response(description, envelope(data), _SNAPSHOT_HEADERS),
        "304": ref("NotModified", "responses"),
        "503": ref("RedisUnavailable", "responses"),
        "504": ref("Timeout", "responses"),
        **(more or {}),
    }


_BAD_REQUEST = {"400": ref("BadRequest", "responses")}
_NOT_RUNNING = json_response(
    "The task is not running; when the history saw it leave, the message says how and when",
    {
        "allOf": [
            ref("Error"),
            {
                "properties": {
                    "code": {"const": ErrorCode.NOT_FOUND.status},
                    "message": {
                        "pattern": "^task .* is not running(: it left the running state as "
                        f"({'|'.join(OUTCOMES)}) at .+ \\(see /tasks/finished\\))?$"
                    },
                }
            },
        ]
    },
)

OPERATIONS: list[Operation] = [
    Operation(
        f"{API_PREFIX}/running",
        "get",
        "listRunningTasks",
        "The running tasks: filters, sort, pages, lean payloads",
        _answers("The running tasks that match", ref("RunningTasks"), _BAD_REQUEST),
        description="Served from the background snapshot while it is fresh; otherwise a live scan (shared by "
        "concurrent requests) answers. Without parameters the answer is the snapshot's pre-rendered body: every "
        "running task, complete (see Task), newest start first. Filters combine with AND, the values of one filter "
        "with OR; time ranges are half-open (after <= t < before). Unknown parameters are ignored.",
        parameters=_params(
            "IfNoneMatch",
            "ClientId",
            "RunningStatus",
            "StartedAfter",
            "StartedBefore",
            "UpdatedAfter",
            "UpdatedBefore",
            "Stalled",
            "RunningSort",
            "Page",
            "PageSize",
            "Fields",
            "FileList",
        ),
    ),
    Operation(
        f"{API_PREFIX}/running/{{task_id}}",
        "get",
        "getRunningTask",
        "One running task",
        _answers(
            "The task; complete (see Task) unless fields or fileList shape it",
            ref("ProjectedTask"),
            {**_BAD_REQUEST, "404": _NOT_RUNNING},
        ),
        description="Its ETag follows the task's own content, so it stays the same while other tasks change. "
        "Parameters other than fields and fileList are ignored.",
        parameters=_params("TaskId", "IfNoneMatch", "Fields", "FileList"),
    ),
    Operation(
        f"{API_PREFIX}/finished",
        "get",
        "listFinishedTasks",
        "Runs this service saw leave the running state since it started, newest end first",
        _answers("One page of the finished runs that match", ref("FinishedTasks"), _BAD_REQUEST),
        description="The history is in memory: it starts empty when the service starts and keeps at most "
        "history_size runs (the oldest detected go first). A run is `vanished` when its key is gone or no longer "
        "holds a task while it was running.",
        parameters=_params(
            "IfNoneMatch",
            "Outcome",
            "ClientId",
            "EndedAfter",
            "EndedBefore",
            "FinishedSort",
            "FinishedPage",
            "FinishedPageSize",
        ),
    ),
    Operation(
        f"{API_PREFIX}/stats",
        "get",
        "getTaskStats",
        "Counts, throughput, durations and progress rate, as of the current snapshot",
        _answers("The figures, each with its unit and what it is computed over", ref("TaskStats")),
        parameters=_params("IfNoneMatch"),
    ),
    Operation(
        f"{API_PREFIX}/cache-stats",
        "get",
        "getCacheStats",
        "The snapshot, the last refresh, counters, the refresh job, the settings in effect and the query cache",
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
            "schemas": schemas(settings),
            "responses": RESPONSES,
            "headers": HEADERS,
            "parameters": parameters(settings),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the tokens of [auth] tokens (SERVICE__AUTH__TOKENS)",
                }
            },
        },
    }
