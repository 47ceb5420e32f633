"""The OpenAPI 3.1 description of every endpoint, built from the settings in effect (auth and limits change
what a client may get back, `running_statuses` what the status filters accept). `OPERATIONS` lists the
endpoints; a test checks it against the app's routes.

The data schemas are generated from the structs the service encodes its answers from (service.shapes) by
`msgspec.json.schema_components`, so the document cannot drift from what is sent; `_refine` then adds only what
a struct's types cannot say: the configured running statuses, the vocabulary's outcomes and file names, the
query's page bounds, and one error schema per failure (`Error` with its `code` fixed). Enumerations and bounds
come from the modules that enforce them.

The document is written so that client generators take it whole (tests/http/test_generated_client.py runs
openapi-python-client and datamodel-code-generator on it): a single-valued `Literal` is a `const`, not a
one-item `enum` (no generator types a boolean enum); every error response names a complete schema of its own,
not an `allOf` that narrows `Error` (openapi-python-client cannot merge an integer with a `const`, and drops
the response); no `oneOf`.

To describe a new endpoint: a shape for its answer in service.shapes (listed in `ANSWERS`), its query parameters
in `parameters()`, and an `Operation` in `OPERATIONS` (its access level decides the 401/429 answers and the
security requirement)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import msgspec

from service import __version__
from service.domain.vocabulary import FILE_OPERATES, FILE_STATUSES, OUTCOME_ALIASES, OUTCOMES
from service.http.dashboard import ASSET_PREFIX
from service.http.envelope import ErrorCode
from service.http.routes import API_PREFIX
from service.query.finished import DEFAULT_FINISHED_PAGE_SIZE, FINISHED_SORT_KEYS
from service.query.params import DEFAULT_PAGE_SIZE, EPOCH_MS_MAX_DIGITS, MAX_PAGE, MAX_PAGE_SIZE, MAX_VALUES
from service.query.project import FILE_LIST_MODES, TASK_FIELDS
from service.query.running import SORT_KEYS
from service.settings import Settings
from service.shapes.envelope import BadRequest, Error, Ok
from service.shapes.events import RunningChanges, RunningSnapshot, TaskChanges
from service.shapes.operations import CacheStats, Health, Ready
from service.shapes.stats import TaskStats
from service.shapes.tasks import FinishedTasks, ProjectedTask, RunningTasks, Task

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
_PAGE = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}
_PAGE_SIZE = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}

# The answers of the endpoints, each in the success envelope `Ok` (the component `<shape>Ok`), and the other
# shapes the document names; msgspec adds every struct they refer to, under the struct's name.
ANSWERS: tuple[type, ...] = (RunningTasks, ProjectedTask, FinishedTasks, TaskStats, CacheStats, Health, Ready)
# RunningSnapshot and TaskChanges are the event stream's event data; RunningChanges the running list's `since=`
OTHER_SHAPES: tuple[type, ...] = (Task, Error, BadRequest, RunningSnapshot, TaskChanges, RunningChanges)


class Access(Enum):
    API = "api"  # bearer token (when configured) and rate limit
    PUBLIC = "public"  # rate limit only
    PROBE = "probe"  # neither: health checks


def ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def ok_name(shape: type) -> str:
    """The component of the success envelope around `shape`."""
    return f"{shape.__name__}Ok"


def schemas(settings: Settings) -> dict[str, dict[str, Any]]:
    """The data schemas: generated from the shapes, stated as generators read them (`_constants`), refined
    (`_refine`), the failures' (`_errors`), and `Instant` (a query parameter's)."""
    envelopes = [Ok[shape] for shape in ANSWERS]  # type: ignore[valid-type]  # made at run time
    refs, generated = msgspec.json.schema_components([*envelopes, *OTHER_SHAPES], ref_template=ref("{name}")["$ref"])
    # msgspec names the envelope around X (the first refs) `Ok_X_`; the document calls it `XOk`
    names = {ref_["$ref"].rsplit("/", 1)[1]: ok_name(shape) for ref_, shape in zip(refs, ANSWERS, strict=False)}
    components = dict(sorted((names.get(name, name), schema) for name, schema in generated.items()))
    for name, schema in components.items():
        schema["title"] = name  # msgspec's is the type's name: `Ok[X]` for `XOk`
        if "description" in schema:  # a docstring: its line breaks are the source's
            schema["description"] = " ".join(schema["description"].split())
        # msgspec lists only the fields without a default as required (a decoder can do without the others). The
        # service only encodes, and no shape omits defaults: a field is absent only when UNSET, the one default
        # that has no `default` in the schema.
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        schema["required"] = [key for key, value in properties.items() if key in required or "default" in value]
    _constants(components)
    _refine(components, settings.running_tasks.running_statuses)
    return {**components, **_errors(components["Error"]), "Instant": INSTANT}


def _constants(node: Any) -> None:
    """msgspec states a `Literal` of one value as a one-item `enum`; generators type a `const` (a `Literal` in
    Python) but not a boolean enum, and make a one-member Python enum of the others."""
    if isinstance(node, dict):
        if len(node.get("enum", ())) == 1:
            node["const"] = node.pop("enum")[0]
        for value in node.values():
            _constants(value)
    elif isinstance(node, list):
        for item in node:
            _constants(item)


def _refine(components: dict[str, dict[str, Any]], running_statuses: Sequence[str]) -> None:
    """What the shapes' types leave open: the statuses follow `running_tasks.running_statuses`; the objects keyed
    by status, outcome or file name list the names always present; pages are bounded."""
    props = {name: schema.get("properties", {}) for name, schema in components.items()}
    for shape in ("Task", "ProjectedTask"):
        for name in ("status", "process"):
            props[shape][name]["enum"] = list(running_statuses)
    props["FinishedTask"]["outcome"]["enum"] = list(OUTCOMES)
    _keyed(props["RunningFigures"]["byStatus"], running_statuses, "every configured running status", closed=True)
    _keyed(props["FinishedFigures"]["byOutcome"], OUTCOMES, "runs since the service started, evicted ones included")
    _keyed(props["DurationSeconds"]["byOutcome"], OUTCOMES, "every outcome")
    _keyed(props["FileSummary"]["byStatus"], FILE_STATUSES, "files per status", closed=False)
    _keyed(props["FileSummary"]["byOperate"], FILE_OPERATES, "files per operation", closed=False)
    props["FileEntry"]["status"]["description"] = f"known: {', '.join(FILE_STATUSES)}"
    props["FileEntry"]["operate"]["description"] = f"known: {', '.join(FILE_OPERATES)}"
    for shape in ("RunningTasks", "FinishedTasks"):
        props[shape]["page"].update(_PAGE)
        props[shape]["pageSize"].update(_PAGE_SIZE)
    refused = ErrorCode.BAD_REQUEST.message
    props["BadRequest"]["message"].update(
        pattern=f"^{refused}: ", description=f"{refused}: <parameter>: '<value>' is not accepted; expected <accepted>"
    )


def _keyed(schema: dict[str, Any], known: Sequence[str], description: str, closed: bool = True) -> None:
    """A generated `dict[str, V]` object with every `known` key present; other keys only where not `closed`."""
    value = schema["additionalProperties"]
    schema.update(
        description=description + ("" if closed else "; other names are added when they occur"),
        properties=dict.fromkeys(known, value),
        required=list(known),
        additionalProperties=False if closed else value,
    )


INSTANT = {
    "description": "An RFC 3339 time (2026-11-28T01:02:03Z, 2026-11-28T09:02:03.250+08:00), a date alone (its "
    f"midnight UTC) or epoch milliseconds (1 to {EPOCH_MS_MAX_DIGITS} digits). A time without an offset is read "
    "as UTC; an unencoded `+` in an offset arrives as a space and is read back as `+`.",
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
        {"type": "string", "pattern": f"^[0-9]{{1,{EPOCH_MS_MAX_DIGITS}}}$"},
    ],
}


def json_response(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "headers": _headers(headers), "content": {JSON: {"schema": schema}}}


def _headers(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    # every response carries these, errors included
    common = {"X-Request-ID": ref("RequestId", "headers"), "X-Content-Type-Options": ref("NoSniff", "headers")}
    return {**common, **(extra or {})}


_LEFT = f"left the running state as ({'|'.join(OUTCOMES)}) at .+ \\(see /tasks/finished\\)"

# The failures an operation may answer, each the schema `Error` with `code` fixed to its status (and `message`
# narrowed where it has a form of its own): a generated client parses each into a class of its own.
ERRORS: dict[str, tuple[ErrorCode, dict[str, Any]]] = {
    "Unauthorized": (ErrorCode.UNAUTHORIZED, {}),
    "NotRunning": (ErrorCode.NOT_FOUND, {"pattern": f"^task .* is not running(: it {_LEFT})?$"}),
    "TooManyRequests": (ErrorCode.TOO_MANY_REQUESTS, {}),
    "InternalError": (ErrorCode.INTERNAL, {}),
    "RedisUnavailable": (ErrorCode.REDIS_UNAVAILABLE, {}),
    "Timeout": (ErrorCode.TIMEOUT, {}),
    # the event stream's 503: max_streams are open (with Retry-After), or Redis cannot be reached
    "StreamUnavailable": (
        ErrorCode.TOO_MANY_STREAMS,
        {"enum": [ErrorCode.TOO_MANY_STREAMS.message, ErrorCode.REDIS_UNAVAILABLE.message]},
    ),
}


def _errors(error: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The schemas of `ERRORS`, made from the generated schema of `Error`."""
    made = {}
    for name, (code, message) in ERRORS.items():
        schema = copy.deepcopy(error)
        schema.update(title=name, description=f"{error['description']} Here {code.status}.")
        schema["properties"]["code"] = {"const": code.status, "default": code.status}  # as BadRequest's
        schema["properties"]["message"].update(message)
        made[name] = schema
    return made


def _error_response(name: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return json_response(f"{description} (message: {ERRORS[name][0].message})", ref(name), headers)


_SNAPSHOT_HEADERS = {"ETag": ref("ETag", "headers"), "X-Snapshot-Generation": ref("SnapshotGeneration", "headers")}

RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": json_response(
        "A query parameter has a value that is not accepted (a parameter that takes one value given twice, a time "
        "range whose end is not after its start, a sort key given twice included)",
        ref("BadRequest"),
    ),
    "Unauthorized": _error_response(
        "Unauthorized",
        "No valid bearer token",
        {"WWW-Authenticate": {"description": 'Bearer realm="running-tasks"', "schema": {"type": "string"}}},
    ),
    "TooManyRequests": _error_response(
        "TooManyRequests",
        "The client's rate limit is used up",
        {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}},
    ),
    "InternalError": _error_response("InternalError", "An unexpected error; the details are in the log only"),
    "RedisUnavailable": _error_response("RedisUnavailable", "Redis cannot be reached"),
    "Timeout": _error_response("Timeout", "The scan exceeded its time budget"),
    "StreamUnavailable": json_response(
        "max_streams event streams are open (Retry-After says when to try again), or Redis cannot be reached",
        ref("StreamUnavailable"),
        {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}},
    ),
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
    described = (
        f"{description} Several values: comma-separated or the parameter repeated; empty items are ignored; at most "
        f"{MAX_VALUES} items; an empty value counts as not given."
    )
    schema = {"type": "array", "items": items, "maxItems": MAX_VALUES}
    return {**_parameter(name, "query", described, schema), "allowEmptyValue": True, "style": "form", "explode": False}


def _parameter(name: str, where: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = schema or {"type": "string"}
    return {"name": name, "in": where, "required": where == "path", "description": description, "schema": schema}


def _query_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    described = f"{description} Given once; an empty value counts as not given."
    return {**_parameter(name, "query", described, schema), "allowEmptyValue": True}


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
        "RequestId": _parameter(
            "X-Request-ID",
            "header",
            "Returned in the response and written in every log line of the request; a value that is not 1-128 "
            "characters of letters, digits and ._~:/+=@- is replaced by a new UUID.",
        ),
        "LastEventId": _parameter(
            "Last-Event-ID",
            "header",
            "The id (generation) of the last event a reconnecting client received: it is sent only the changes since, "
            "in one changes event, while the service holds them (held_generations); else a fresh snapshot.",
        ),
        "IfNoneMatch": _parameter(
            "If-None-Match",
            "header",
            "ETags of a previous answer; 304 when the answer would still have one of them (never for an answer a "
            "live scan produced).",
        ),
        "TaskId": _parameter(
            "taskId", "path", "The task's id (the key's suffix), percent-encoded; any character, `/` included."
        ),
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
        "Page": _query_parameter("page", _PAGE, "Page number, from 1; a page past the last one has no tasks."),
        "PageSize": _query_parameter(
            "pageSize",
            _PAGE_SIZE,
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
        "FinishedPage": _query_parameter("page", _PAGE, "Page number, from 1."),
        "FinishedPageSize": _query_parameter(
            "pageSize", _PAGE_SIZE, f"Runs per page (default {DEFAULT_FINISHED_PAGE_SIZE}): this list is always paged."
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


def _params(names: str) -> tuple[dict[str, str], ...]:
    """References to the parameters named in `names`, separated by spaces."""
    return tuple(ref(name, "parameters") for name in names.split())


def _answers(description: str, shape: type, more: dict[str, Any] | None = None) -> dict[str, Any]:
    """The responses of an endpoint answered from the snapshot: 200 with its ETag, 304, 503, 504 and `more`."""
    return {
        "200": json_response(description, ref(ok_name(shape)), _SNAPSHOT_HEADERS),
        "304": ref("NotModified", "responses"),
        "503": ref("RedisUnavailable", "responses"),
        "504": ref("Timeout", "responses"),
        **(more or {}),
    }


_BAD_REQUEST = {"400": ref("BadRequest", "responses")}
_NOT_RUNNING = json_response(
    "The task is not running; when the history saw it leave, the message says how and when", ref("NotRunning")
)

_TEXT = {"schema": {"type": "string"}}


def _page_answers(content: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's files: the file (gzip when accepted), or 304 against its ETag; CSP and ETag headers."""
    return {
        "200": {
            "description": "The file, with a strong ETag, Cache-Control: no-cache and the page's "
            "Content-Security-Policy",
            "content": content,
        },
        "304": {"description": "Not modified: If-None-Match names the file's ETag"},
    }


OPERATIONS: list[Operation] = [
    Operation(
        f"{API_PREFIX}/running",
        "get",
        "listRunningTasks",
        "The running tasks: filters, sort, pages, lean payloads",
        _answers("The running tasks that match", RunningTasks, _BAD_REQUEST),
        description="Served from the background snapshot while it is fresh; otherwise a live scan (shared by "
        "concurrent requests) answers. Without parameters the answer is the snapshot's pre-rendered body: every "
        "running task, complete (see Task), newest start first. Filters combine with AND, the values of one filter "
        "with OR; time ranges are half-open (after <= t < before). Unknown parameters are ignored. With "
        "`since=<generation>` (and no page, pageSize or sort) the answer's data is a RunningChanges instead: what "
        "changed in the view after that generation, or every task flagged as a reset when it is no longer held.",
        parameters=_params(
            "IfNoneMatch ClientId RunningStatus StartedAfter StartedBefore UpdatedAfter UpdatedBefore Stalled "
            "RunningSort Page PageSize Fields FileList"
        ),
    ),
    Operation(
        f"{API_PREFIX}/running/events",
        "get",
        "streamRunningTasks",
        "The running tasks as a server-sent event stream of changes",
        {
            "200": {
                "description": "An event stream: a `retry:` hint; a `snapshot` event (data: RunningSnapshot); then "
                "a `changes` event (data: TaskChanges) for every new snapshot that changes the view; comment lines "
                "as heartbeats. Every event's id is its generation. A slow reader is sent a fresh snapshot instead "
                "of what it fell behind on.",
                "headers": _headers(),
                "content": {"text/event-stream": _TEXT},
            },
            **_BAD_REQUEST,
            "503": ref("StreamUnavailable", "responses"),
            "504": ref("Timeout", "responses"),
        },
        description="Takes the running list's filters and projection (fields must include taskId); page, pageSize "
        "and sort do not apply. A stream counts once against the rate limit; at most max_streams are open.",
        parameters=_params(
            "LastEventId ClientId RunningStatus StartedAfter StartedBefore UpdatedAfter UpdatedBefore Stalled Fields "
            "FileList"
        ),
    ),
    Operation(
        f"{API_PREFIX}/running/{{taskId}}",
        "get",
        "getRunningTask",
        "One running task",
        _answers(
            "The task; complete (see Task) unless fields or fileList shape it",
            ProjectedTask,
            {**_BAD_REQUEST, "404": _NOT_RUNNING},
        ),
        description="Its ETag follows the task's own content, so it stays the same while other tasks change. "
        "Parameters other than fields and fileList are ignored.",
        parameters=_params("TaskId IfNoneMatch Fields FileList"),
    ),
    Operation(
        f"{API_PREFIX}/finished",
        "get",
        "listFinishedTasks",
        "Runs this service saw leave the running state since it started, newest end first",
        _answers("One page of the finished runs that match", FinishedTasks, _BAD_REQUEST),
        description="The history is in memory: it starts empty when the service starts and keeps at most "
        "history_size runs (the oldest detected go first). A run is `vanished` when its key is gone or no longer "
        "holds a task while it was running.",
        parameters=_params(
            "IfNoneMatch Outcome ClientId EndedAfter EndedBefore FinishedSort FinishedPage FinishedPageSize"
        ),
    ),
    Operation(
        f"{API_PREFIX}/stats",
        "get",
        "getTaskStats",
        "Counts, throughput, durations and progress rate, as of the current snapshot",
        _answers("The figures, each with its unit and what it is computed over", TaskStats),
        parameters=_params("IfNoneMatch"),
    ),
    Operation(
        f"{API_PREFIX}/cache-stats",
        "get",
        "getCacheStats",
        "The snapshot, the last refresh, counters, the refresh job, the settings in effect and the query cache",
        {"200": json_response("The cache's state", ref(ok_name(CacheStats)))},
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
                "content": {"text/plain": _TEXT, "application/openmetrics-text": _TEXT},
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
    *(
        Operation(
            path,
            "get",
            operation_id,
            "The dashboard: a page for operators (it holds no data: its calls to the API carry the token)",
            _page_answers({"text/html": _TEXT}),
            access=Access.PUBLIC,
            tags=("dashboard",),
        )
        for path, operation_id in (("/", "getDashboardRoot"), ("/dashboard", "getDashboard"))
    ),
    *(
        Operation(
            ASSET_PREFIX + name,
            "get",
            operation_id,
            f"The dashboard's {what}",
            _page_answers({media: _TEXT}),
            access=Access.PUBLIC,
            tags=("dashboard",),
        )
        for name, operation_id, what, media in (
            ("dashboard.js", "getDashboardScript", "script", "text/javascript"),
            ("dashboard.css", "getDashboardStyle", "style sheet", "text/css"),
            ("stream.js", "getDashboardStreamWorker", "worker (reads the event stream)", "text/javascript"),
        )
    ),
    Operation(
        "/healthz",
        "get",
        "getHealth",
        "Liveness: the process answers",
        {"200": json_response("Alive", ref(ok_name(Health)))},
        access=Access.PROBE,
        tags=("operations",),
    ),
    Operation(
        "/readyz",
        "get",
        "getReadiness",
        "Readiness: a fresh snapshot exists (or, without the cache, Redis answers PING)",
        {
            "200": json_response("Ready", ref(ok_name(Ready))),
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
            {"name": "dashboard", "description": "The page for operators and its assets (no token needed)"},
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
