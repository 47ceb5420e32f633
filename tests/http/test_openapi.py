"""The OpenAPI document: valid, in step with the routes and the access rules, and honoured by the running app
under a property-based fuzzer (schemathesis) against a real redis-server holding simulated producer data."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, get_args
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import jsonschema
import msgspec
import orjson
import pytest
import redis.asyncio as aioredis
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from starlette.routing import Route

import service.shapes.envelope
import service.shapes.events
import service.shapes.operations
import service.shapes.stats
import service.shapes.tasks
from service.devtools.embedded import RedisServerProcess, free_port
from service.devtools.simulator import SimTask, Simulator, build_workload
from service.domain.times import parse_time
from service.domain.vocabulary import FILE_OPERATES, FILE_STATUSES, OUTCOME_ALIASES, OUTCOMES
from service.http import security
from service.http.app import create_app
from service.http.openapi import ERRORS, OPERATIONS, Access, build_document
from service.query.finished import DEFAULT_FINISHED_PAGE_SIZE
from service.query.params import DEFAULT_PAGE_SIZE, MAX_PAGE, MAX_PAGE_SIZE, parse_instant
from service.query.project import BASE_FIELDS
from service.settings import Settings, settings_from_mapping
from service.shapes.envelope import Error, Ok
from service.shapes.stats import TaskStats
from service.shapes.tasks import FinishedTask, Outcome, Task

TOKEN = "fuzz-token-0123456789abcdef"
FUZZ_SETTINGS: dict[str, Any] = {
    "auth": {"tokens": [TOKEN]},
    # on, so that 429 is part of the contract, but high enough that the fuzzer is not throttled
    "rate_limit": {"requests_per_second": 10_000, "burst": 10_000},
    "cors": {"allowed_origins": ["https://dash.example.com"]},
    "running_tasks": {"refresh_interval": 0.5},
}


def _template(route: Route) -> str:
    # Starlette writes `{name:converter}`; OpenAPI only `{name}`
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)


def test_document_is_valid_openapi() -> None:
    for raw in ({}, FUZZ_SETTINGS, {"rate_limit": {"requests_per_second": 0}}):
        validate(build_document(settings_from_mapping(raw)))


def test_every_route_is_described_and_every_description_is_a_route() -> None:
    app = create_app(settings_from_mapping(FUZZ_SETTINGS), redis=aioredis.Redis())
    routed = {
        (_template(route), method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or ())
        if method != "HEAD"  # Starlette answers HEAD wherever it answers GET
    }
    paths = build_document(app.state.settings)["paths"]
    described = {(path, method) for path, methods in paths.items() for method in methods}
    assert routed == described
    assert len(routed) >= 6


def test_access_levels_match_what_the_middleware_enforces() -> None:
    for op in OPERATIONS:
        assert (op.access is Access.PROBE) == (op.path in security.PROBE_PATHS), op.path
        assert (op.access is Access.PUBLIC) == (op.path in security.PUBLIC_PATHS), op.path


def test_document_follows_the_settings() -> None:
    open_doc = build_document(Settings())
    running = open_doc["paths"]["/codebase-embedder/api/v1/tasks/running"]["get"]
    assert running["security"] == []
    assert "401" not in running["responses"]
    assert "429" not in running["responses"]  # the limit is off by default
    secured = build_document(settings_from_mapping(FUZZ_SETTINGS))["paths"]
    assert secured["/codebase-embedder/api/v1/tasks/running"]["get"]["security"] == [{"bearerAuth": []}]
    assert "401" in secured["/metrics"]["get"]["responses"]
    assert secured["/healthz"]["get"]["security"] == []
    assert "401" not in secured["/openapi.json"]["get"]["responses"]
    assert "429" not in secured["/readyz"]["get"]["responses"]  # probes are never limited
    unlimited = build_document(settings_from_mapping({"rate_limit": {"requests_per_second": 0}}))["paths"]
    assert all("429" not in op["responses"] for methods in unlimited.values() for op in methods.values())
    custom = build_document(settings_from_mapping({"running_tasks": {"running_statuses": ["queued", "busy"]}}))
    components = custom["components"]
    assert components["parameters"]["RunningStatus"]["schema"]["items"]["enum"] == ["queued", "busy", ""]
    schemas = _resolve(components["schemas"], custom)
    for shape in ("Task", "ProjectedTask"):
        for name in ("status", "process"):
            assert schemas[shape]["properties"][name]["enum"] == ["queued", "busy"], (shape, name)
    by_status = schemas["TaskStats"]["properties"]["running"]["properties"]["byStatus"]
    assert by_status["required"] == list(by_status["properties"]) == ["queued", "busy"]
    assert by_status["additionalProperties"] is False


def test_document_states_the_vocabulary_and_the_bounds() -> None:
    schemas = _resolve(DOCUMENT["components"]["schemas"])
    assert schemas["FinishedTask"]["properties"]["outcome"]["enum"] == list(OUTCOMES)
    assert set(get_args(Outcome)) == set(OUTCOMES)  # the shape's Literal, which msgspec would state instead
    finished = schemas["TaskStats"]["properties"]["finished"]["properties"]
    for by_outcome in (finished["byOutcome"], finished["durationSeconds"]["properties"]["byOutcome"]):
        assert by_outcome["required"] == list(by_outcome["properties"]) == list(OUTCOMES)
        assert by_outcome["additionalProperties"] is False
    summary = schemas["FileSummary"]["properties"]
    for name, known in (("byStatus", FILE_STATUSES), ("byOperate", FILE_OPERATES)):
        assert summary[name]["required"] == list(known)
        assert summary[name]["additionalProperties"] == {"type": "integer", "minimum": 0}  # others when they occur
    for shape in ("RunningTasks", "FinishedTasks"):
        assert schemas[shape]["properties"]["page"]["maximum"] == MAX_PAGE
        assert schemas[shape]["properties"]["pageSize"]["maximum"] == MAX_PAGE_SIZE
    assert "oneOf" not in schemas["Distribution"]
    # the shared Error schema states no enum of its own; each failure's schema is Error with its code fixed
    assert schemas["Error"]["properties"]["code"] == {"type": "integer"}
    for name, (code, _) in ERRORS.items():
        assert schemas[name]["properties"]["code"]["const"] == code.status, name
        assert list(schemas[name]["properties"]) == list(schemas["Error"]["properties"]), name
    assert schemas["BadRequest"]["properties"]["code"]["const"] == 400
    # a single-valued Literal is a const (generators type it), never a one-item enum
    assert schemas["RunningTasksOk"]["properties"]["success"] == {"const": True, "default": True}
    assert not [node for node in _nodes(DOCUMENT) if len(node.get("enum", ())) == 1]
    # and no composition a generator has to merge or choose from (each error names a complete schema)
    assert not [node for node in _nodes(DOCUMENT) if {"allOf", "oneOf"} & node.keys()]


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in `node`, `node` included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _nodes(item)


def _shape_of(component: str) -> type[msgspec.Struct] | None:
    """The struct a component of the document is generated from (`XOk`: the envelope `Ok` around X; a failure of
    ERRORS: `Error`)."""
    if component.endswith("Ok"):
        return Ok
    if component in ERRORS:
        return Error
    shapes = (service.shapes.tasks, service.shapes.stats, service.shapes.operations, service.shapes.envelope)
    for module in (*shapes, service.shapes.events):
        found = getattr(module, component, None)
        if isinstance(found, type) and issubclass(found, msgspec.Struct):
            return found
    return None


def test_schemas_are_generated_from_the_shapes() -> None:
    """Every data schema has exactly the fields its struct encodes, in the same order, and requires every one but
    those that can be UNSET (left out): the document cannot drift from what the service sends."""
    schemas = DOCUMENT["components"]["schemas"]
    for shape in (Task, FinishedTask, TaskStats):
        encoded = [field.encode_name for field in msgspec.structs.fields(shape)]
        assert list(schemas[shape.__name__]["properties"]) == encoded
    generated = {name for name in schemas if name != "Instant"}
    named = {"Task", "ProjectedTask", "RunningTasks", "FinishedTask", "FinishedTasks", "TaskStats", "CacheStats"}
    assert named | {"Error", "BadRequest", "ParameterError", "FileEntry", "FileSummary", "Distribution"} <= generated
    for name in generated:
        shape = _shape_of(name)
        assert shape is not None, name
        fields = msgspec.structs.fields(shape)
        assert list(schemas[name]["properties"]) == [field.encode_name for field in fields], name
        always = [field.encode_name for field in fields if field.default is not msgspec.UNSET]
        assert schemas[name]["required"] == always, name
        assert not shape.__struct_config__.omit_defaults, name  # else a field with a default may be left out
    # the success envelope is `Ok`'s, around the shape an endpoint answers
    running = DOCUMENT["paths"][RUNNING]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert running == {"$ref": "#/components/schemas/RunningTasksOk"}
    assert schemas["RunningTasksOk"]["properties"]["data"] == {"$ref": "#/components/schemas/RunningTasks"}


@pytest.mark.anyio
async def test_served_document_is_the_built_one() -> None:
    app = create_app(settings_from_mapping(FUZZ_SETTINGS), redis=aioredis.Redis())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
        response = await http.get("/openapi.json")  # no token needed, and no lifespan: no Redis is touched
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == orjson.loads(orjson.dumps(build_document(app.state.settings)))


# -- the fuzzer ------------------------------------------------------------------------------------------------


class _Server:
    """The app under uvicorn on a free loopback port, in a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-fuzz", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


SIMULATED = 30  # newer-producer tasks (client ids, producer times), on top of the workload
ENDING, VANISHING = 8, 4  # of those, once the service has seen them running: end (completed or failed), vanish


async def _fill(url: str) -> list[SimTask]:
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushall()
        now = int(time.time() * 1000)
        await build_workload(client, tasks=300, unrelated=50, seed=6, large_fraction=0.01, large_files=300, now_ms=now)
        sim = Simulator(seed=7, newer_producer_fraction=1.0)
        tasks = [sim.new_task(outcome=("completed", "failed")[i % 2]) for i in range(SIMULATED)]
        await sim.write(client, tasks, now)
        await sim.write_anomalies(client)
        return tasks
    finally:
        await client.aclose()


async def _finish_some(url: str, tasks: list[SimTask]) -> None:
    """The first ENDING tasks run to their end, the next VANISHING ones lose their key: the history gets runs of
    every outcome the simulator knows."""
    ending, vanishing = tasks[:ENDING], tasks[ENDING : ENDING + VANISHING]
    client = aioredis.Redis.from_url(url)
    sim = Simulator(0)
    try:
        for task in ending:
            while sim.advance(task):
                pass
        await sim.write(client, ending, int(time.time() * 1000))
        await client.delete(*(task.key() for task in vanishing))
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def fuzz_base_url(redis_server: RedisServerProcess) -> Iterator[str]:
    redis_server.start()
    tasks = asyncio.run(_fill(redis_server.url))
    with _Server(settings_from_mapping({**FUZZ_SETTINGS, "redis": {"url": redis_server.url}})) as base_url:
        # the startup scan has seen every task running; now some leave, so that the history has every outcome
        asyncio.run(_finish_some(redis_server.url, tasks))
        deadline = time.monotonic() + 20
        while _get(base_url, "/codebase-embedder/api/v1/tasks/finished")["totalTasks"] < ENDING + VANISHING:
            assert time.monotonic() < deadline, "the finished tasks never reached the history"
            time.sleep(0.1)
        yield base_url


def _get(base_url: str, path: str) -> Any:
    response = httpx.get(base_url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]


DOCUMENT = build_document(settings_from_mapping(FUZZ_SETTINGS))
# The event stream never ends by itself: a request-response fuzzer cannot read it (tests/http/test_events.py
# covers it against the same shapes).
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(operation_id="streamRunningTasks")
RUNNING = "/codebase-embedder/api/v1/tasks/running"


def _schema_of(path: str, status: str) -> dict[str, Any]:
    response = _resolve(DOCUMENT["paths"][path]["get"]["responses"][status])
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


@pytest.mark.real_redis
def test_answers_the_fuzzer_rarely_sees_match_the_document(fuzz_base_url: str) -> None:
    """Complete tasks against the full Task schema (the fuzzer checks them against the projected one), tasks by
    id (the fuzzer cannot guess an id), and the 404 of a task the history saw leave."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    full_task = _validator(_resolve(DOCUMENT["components"]["schemas"]["Task"]))
    listed = httpx.get(fuzz_base_url + RUNNING, headers=auth).json()
    _validator(_schema_of(RUNNING, "200")).validate(listed)
    assert listed["data"]["totalTasks"] > 0
    for task in listed["data"]["tasks"]:
        full_task.validate(task)
    by_id = _schema_of(f"{RUNNING}/{{taskId}}", "200")
    for task in listed["data"]["tasks"][:20]:
        for query in ("", "?fileList=summary", "?fields=taskId,stalled,fileList", "?fields=startTime&fileList=none"):
            response = httpx.get(f"{fuzz_base_url}{RUNNING}/{quote(task['taskId'])}{query}", headers=auth)
            assert response.status_code == 200, response.text
            _validator(by_id).validate(response.json())
            _check_projection(_sent_query(parse_qsl(query.lstrip("?"))), response.json()["data"])
            if not query:
                full_task.validate(response.json()["data"])
                assert response.json()["data"] == task
    finished = _get(fuzz_base_url, "/codebase-embedder/api/v1/tasks/finished?status=vanished")["tasks"]
    assert finished
    gone = httpx.get(f"{fuzz_base_url}{RUNNING}/{quote(finished[0]['taskId'])}", headers=auth)
    assert gone.status_code == 404
    assert "left the running state as vanished" in gone.json()["message"]
    _validator(_schema_of(f"{RUNNING}/{{taskId}}", "404")).validate(gone.json())


@pytest.mark.real_redis
@schema.parametrize()
# bounded (50 examples per operation) and derandomized, so that a CI run is reproducible
@settings(max_examples=50, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_fuzz_the_running_app(case: schemathesis.Case, fuzz_base_url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = case.call(base_url=fuzz_base_url, headers=headers)
    if _refused_by_the_http_server(response):
        return
    pairs = parse_qsl(urlsplit(response.request.url or "").query, keep_blank_values=True)
    operation = case.operation.definition.raw
    valid = _valid_as_sent(operation, pairs, response.request.headers, case.path_parameters or {})
    query = _sent_query(pairs)
    # Every check, schema conformance included, with two corrections that schemathesis cannot make itself:
    excluded = []
    if valid:
        # a "negative" case that is valid as sent (a scalar for a comma-separated list is a list of one; a dropped
        # Authorization header is ours again) is judged as the valid request the service received
        excluded.append(schemathesis.checks.negative_data_rejection)
    if response.status_code == 400:
        # a valid query that breaks a rule between two parameters (OpenAPI cannot state those) gets the 400 the
        # docs promise; any other 400 must answer an invalid request
        assert _breaks_a_cross_parameter_rule(response, query) or not valid, f"{pairs} -> {response.text}"
        excluded.append(schemathesis.checks.positive_data_acceptance)
    case.validate_response(response, headers=headers, excluded_checks=excluded)
    check = _WHAT_THE_DOCS_SAY.get(operation["operationId"])
    if check is not None and response.status_code == 200:
        check(query, response.json()["data"])


def _refused_by_the_http_server(response: Any) -> bool:
    """uvicorn's own plain 400 to a request it cannot parse (a request line over 64 KiB, as the fuzzer sometimes
    sends): the app never saw it, so it is no answer of the API (every one of those has an X-Request-ID)."""
    return (
        response.status_code == 400
        and "X-Request-ID" not in response.headers
        and response.text == "Invalid HTTP request received."
    )


def _resolve(node: Any, document: dict[str, Any] | None = None) -> Any:
    """`node` with every `#/components/...` reference of `document` (DOCUMENT) replaced by what it names."""
    document = DOCUMENT if document is None else document
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(target, document)
        return {key: _resolve(value, document) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, document) for item in node]
    return node


def _valid_as_sent(
    operation: dict[str, Any], pairs: list[tuple[str, str]], headers: Mapping[str, str], path: Mapping[str, Any]
) -> bool:
    """Whether the request, each declared parameter read the way OpenAPI serializes it, is valid."""
    sent: dict[str, list[str]] = {}
    for name, value in pairs:
        sent.setdefault(name, []).append(value)
    for parameter in _resolve(operation.get("parameters", [])):
        name, schema = parameter["name"], parameter["schema"]
        if parameter["in"] == "path":
            if not _validator(schema).is_valid(str(path[name])):
                return False
            continue
        if parameter["in"] == "header":
            if name in headers and not _validator(schema).is_valid(headers[name]):
                return False
            continue
        texts = sent.get(name)
        if texts is None or (texts == [""] and parameter.get("allowEmptyValue")):
            continue
        kind = schema.get("type")
        if len(texts) > 1 and kind != "array":
            return False
        value: Any = texts[0]
        if kind == "array":
            value = [item for text in texts for item in text.split(",")]
        elif kind == "integer" and re.fullmatch(r"-?[0-9]+", value):
            value = int(value)
        elif kind == "boolean" and value in ("true", "false"):
            value = value == "true"
        if not _validator(schema).is_valid(value):
            return False
    return True


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _sent_query(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The query as the service reads it: every value of a name, comma-split, stripped, empty ones dropped."""
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if parts:
            values.setdefault(name, []).extend(parts)
    return values


def _breaks_a_cross_parameter_rule(response: Any, query: dict[str, list[str]]) -> bool:
    data = response.json()["data"]
    later = re.fullmatch(r"a time later than (\w+) \(.*\)", data["accepted"])
    if later is not None:
        after, before = later.group(1), data["parameter"]
        return parse_instant(after, query[after][0]) >= parse_instant(before, query[before][0])
    if data["parameter"] == "sort" and data["accepted"] == "each key at most once":
        names = [key.lstrip("+-") for key in dict.fromkeys(query["sort"])]
        return len(names) != len(set(names))
    return False


# -- what the docs say beyond the schema ------------------------------------------------------------------------


def _running_list(query: dict[str, list[str]], data: Any) -> None:
    _check_page(query, data, default_size=None)
    for task in data["tasks"]:
        _check_projection(query, task)
        _check_running_filters(query, task)
    _check_order(query, data["tasks"], "-startTime")


def _finished_list(query: dict[str, list[str]], data: Any) -> None:
    _check_page(query, data, default_size=DEFAULT_FINISHED_PAGE_SIZE)
    outcomes = {OUTCOME_ALIASES.get(name, name) for name in query.get("status", OUTCOMES)}
    for record in data["tasks"]:
        assert record["outcome"] in outcomes
        assert record["clientId"] in query.get("clientId", [record["clientId"]])
        _check_range(query, "ended", record["endTime"])
    _check_order(query, data["tasks"], "-endTime")


def _check_page(query: dict[str, list[str]], data: Any, default_size: int | None) -> None:
    total, tasks = data["totalTasks"], data["tasks"]
    if "page" not in query and "pageSize" not in query and default_size is None:
        assert "page" not in data and "pageSize" not in data and "totalPages" not in data
        assert len(tasks) == total
        return
    page = int(query.get("page", ["1"])[0])
    size = int(query.get("pageSize", [str(default_size or DEFAULT_PAGE_SIZE)])[0])
    assert (data["page"], data["pageSize"]) == (page, size)
    assert data["totalPages"] == math.ceil(total / size)
    assert len(tasks) == max(0, min(size, total - (page - 1) * size))


def _check_projection(query: dict[str, list[str]], task: dict[str, Any]) -> None:
    fields = query.get("fields")
    mode = query.get("fileList", [None])[0]
    if mode is None:
        mode = "full" if fields is None or "fileList" in fields else "none"
    wanted = [name for name in BASE_FIELDS if fields is None or name in fields]
    assert [name for name in task if name not in ("fileList", "fileSummary")] == [
        name for name in wanted if name != "estimatedCompletionTime" or name in task
    ]
    assert ("fileList" in task) == (mode == "full") and ("fileSummary" in task) == (mode == "summary")
    if "fileSummary" in task:
        summary = task["fileSummary"]
        assert sum(summary["byStatus"].values()) == sum(summary["byOperate"].values()) == summary["total"]


def _check_running_filters(query: dict[str, list[str]], task: dict[str, Any]) -> None:
    if "clientId" in task and "clientId" in query:
        assert task["clientId"] in query["clientId"]
    if "process" in task and "status" in query:
        assert task["process"] in query["status"]
    if "stalled" in task and "stalled" in query:
        assert task["stalled"] is (query["stalled"][0].lower() == "true")
    if "startTime" in task:
        _check_range(query, "started", task["startTime"])
    if "lastUpdateTime" in task:
        _check_range(query, "updated", task["lastUpdateTime"])


def _check_range(query: dict[str, list[str]], prefix: str, time_text: str) -> None:
    moment = parse_time(time_text)
    assert moment is not None
    if f"{prefix}After" in query:
        assert moment >= parse_instant(f"{prefix}After", query[f"{prefix}After"][0])
    if f"{prefix}Before" in query:
        assert moment < parse_instant(f"{prefix}Before", query[f"{prefix}Before"][0])


def _check_order(query: dict[str, list[str]], tasks: list[dict[str, Any]], default: str) -> None:
    """The leading sort key orders the page (the others only break its ties)."""
    lead = query.get("sort", [default])[0]
    name = lead.lstrip("+-")
    if not tasks or name not in tasks[0]:
        return
    values = [parse_time(task[name]) if name.endswith("Time") else task[name] for task in tasks]
    assert values == sorted(values, reverse=lead.startswith("-")), (lead, values)


# by operationId: what a 200 must say about the query that asked for it
_WHAT_THE_DOCS_SAY: dict[str, Callable[[dict[str, list[str]], Any], None]] = {
    "listRunningTasks": _running_list,
    "getRunningTask": _check_projection,
    "listFinishedTasks": _finished_list,
}
