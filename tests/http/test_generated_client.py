"""Clients generated from the document take every answer: openapi-python-client generates a client from the
/openapi.json of a running service (`python -m service serve` on a real redis-server), with no warning, and that
client parses a 200, a 304, a 400, a 401, a 404 and a 503 of the service into their models; datamodel-code-generator
takes the document with no warning, and its models read the service's envelopes.

The generators are the `test` extra's; they run from the venv's scripts directory (beside sys.executable), where
ruff, which openapi-python-client runs on what it generates, is too."""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pytest
import redis

from service.devtools.embedded import RedisServerProcess, free_port
from service.http.envelope import ErrorCode, bad_request, error_body
from service.http.openapi import ERRORS, build_document
from service.query.params import QueryError
from service.settings import Settings, settings_from_mapping
from service.shapes.envelope import encode_ok
from service.shapes.operations import Health, Ready
from tests.conftest import first_answer

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(sys.executable).parent
TOKEN = "generated-client-token-0123456789"
PACKAGE = "running_tasks_generated_client"  # the generated package's name (openapi-python-client's config)
TASK_ID = "5f1c2a9e-8d7b-4c1e-9a65-3f0d2b7c4e11"
VALUE = orjson.dumps(
    {
        "process": "processing",
        "totalProgress": 40,
        "fileList": [{"path": "src/main.go", "status": "completed", "operate": "add"}],
    }
)
# the settings the service runs with: a bearer token (401 is part of the contract) and a rate limit high enough
# never to be reached (429 is part of it too)
SETTINGS = f"""
[auth]
tokens = ["{TOKEN}"]

[rate_limit]
requests_per_second = 10000
burst = 10000

[running_tasks]
refresh_interval = 0.2
"""


def _run(*command: str, cwd: Path) -> str:
    """The command's output (stdout and stderr), which it must exit 0 with."""
    assert Path(command[0]).exists(), f"{command[0]} is missing: pip install -e '.[test]'"
    env = {**os.environ, "PATH": f"{SCRIPTS}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout
    return done.stdout


def _compile_strictly(directory: Path) -> None:
    """Compile every generated module with warnings as errors: a SyntaxWarning (an invalid escape in a docstring
    made from a description, say) fails the test, as it would a user's `python -W error`."""
    for path in sorted(directory.rglob("*.py")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(path.read_text(encoding="utf-8"), str(path), "exec")


@dataclass
class Service:
    base_url: str
    redis: RedisServerProcess
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def service(own_redis_server: RedisServerProcess, tmp_path: Path) -> Iterator[Service]:
    """`python -m service serve` with a token and a rate limit, started while its Redis is down (stopped here;
    the test starts it again, on the same port)."""
    own_redis_server.stop()
    settings = tmp_path / "settings.toml"
    settings.write_text(SETTINGS)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {name: value for name, value in os.environ.items() if not name.startswith("SERVICE")}
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
            + ["--settings", str(settings)],
            cwd=ROOT,
            env={**env, "REDIS_URL": own_redis_server.url},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        assert first_answer(process, f"{base_url}/healthz").status_code == 200, log.read_text()
        yield Service(base_url, own_redis_server, process, log)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture
def generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where the generated package goes; put on sys.path, and its modules forgotten afterwards."""
    out = tmp_path / "client"
    monkeypatch.syspath_prepend(str(out))
    yield out
    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def _snake(operation_id: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


def _check_every_response_is_parsed(document: dict[str, Any], package: Path) -> None:
    """Each operation's module parses every status the document gives it: JSON bodies into the model named by
    the schema (a component of its own for each), none for 304, text for the metrics."""
    responses = document["components"]["responses"]
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            module = package / "api" / operation["tags"][0] / f"{_snake(operation['operationId'])}.py"
            source = module.read_text()
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[1]]
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema is None:
                    parsed = "cast(Any, None)" if status == "304" else "response.text"
                elif "$ref" in schema:
                    parsed = f"{schema['$ref'].rsplit('/', 1)[1]}.from_dict(response.json())"
                else:
                    parsed = ".from_dict(response.json())"
                assert f"response_{status} = " in source and parsed in source, (method, path, status, parsed)


def _generate_client(document: dict[str, Any], out: Path) -> Path:
    """The package openapi-python-client generates from `document` into `out`, with no warning, that compiles
    with warnings as errors."""
    (out.parent / "openapi.json").write_bytes(orjson.dumps(document))
    (out.parent / "config.yaml").write_text(
        f"project_name_override: running-tasks-generated-client\npackage_name_override: {PACKAGE}\n"
    )
    output = _run(
        str(SCRIPTS / "openapi-python-client"),
        "generate",
        "--path",
        "openapi.json",
        "--config",
        "config.yaml",
        "--output-path",
        str(out),
        "--overwrite",
        cwd=out.parent,
    )
    # nothing but its progress line: any other is a warning that a schema, a response or a hook was left out
    assert [line for line in output.splitlines() if line.strip() and not line.startswith("Generating ")] == [], output
    package = out / PACKAGE
    _compile_strictly(package)
    return package


@pytest.mark.real_redis
def test_a_client_generated_from_the_served_document_parses_every_answer(service: Service, generated: Path) -> None:
    document = httpx.get(f"{service.base_url}/openapi.json", timeout=10).json()
    _check_every_response_is_parsed(document, _generate_client(document, generated))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = importlib.import_module(PACKAGE)
        models = importlib.import_module(f"{PACKAGE}.models")
        running = importlib.import_module(f"{PACKAGE}.api.tasks.list_running_tasks")
        task = importlib.import_module(f"{PACKAGE}.api.tasks.get_running_task")
        readiness = importlib.import_module(f"{PACKAGE}.api.operations.get_readiness")
    base_url, timeout = service.base_url, httpx.Timeout(10)
    with (
        client.AuthenticatedClient(base_url=base_url, token=TOKEN, timeout=timeout) as authorized,
        client.Client(base_url=base_url, timeout=timeout) as anonymous,
        client.AuthenticatedClient(base_url=base_url, token=f"not-{TOKEN}", timeout=timeout) as wrong,
    ):
        # 503: Redis is down and there has been no snapshot yet
        answer = running.sync_detailed(client=authorized)
        assert answer.status_code == 503, answer.content
        assert isinstance(answer.parsed, models.RedisUnavailable)
        assert (answer.parsed.code, answer.parsed.message) == (503, ErrorCode.REDIS_UNAVAILABLE.message)
        assert answer.parsed.success is False and answer.parsed.data is None
        not_ready = readiness.sync_detailed(client=anonymous)
        assert not_ready.status_code == 503 and isinstance(not_ready.parsed, models.RedisUnavailable)

        # 200: Redis is back, with one running task
        service.redis.start()
        with redis.Redis.from_url(service.redis.url) as producer:
            producer.set(f"request:id:{TASK_ID}", VALUE, ex=3600)
        deadline = time.monotonic() + 20
        while True:  # a refresh may have read Redis before the task was written: until one has read it
            answer = running.sync_detailed(client=authorized)
            if answer.status_code == 200 and answer.parsed.data.total_tasks == 1:
                break
            assert time.monotonic() < deadline, answer.content
            time.sleep(0.05)
        ok = answer.parsed
        assert isinstance(ok, models.RunningTasksOk)
        assert (ok.code, ok.message, ok.success) == (0, "ok", True)
        assert isinstance(ok.data, models.RunningTasks)
        (listed,) = ok.data.tasks
        assert isinstance(listed, models.ProjectedTask)
        assert listed.task_id == TASK_ID and listed.total_progress == 40 and listed.stalled is False
        assert listed.status == models.ProjectedTaskStatus.PROCESSING
        assert isinstance(listed.start_time, datetime.datetime) and listed.start_time.tzinfo is not None
        (entry,) = listed.file_list
        assert isinstance(entry, models.FileEntry) and entry.path == "src/main.go"
        # the same answer again, with its ETag: 304 and nothing to parse
        unchanged = running.sync_detailed(client=authorized, if_none_match=answer.headers["etag"])
        assert unchanged.status_code == 304 and unchanged.parsed is None
        one = task.sync_detailed(TASK_ID, client=authorized)
        assert one.status_code == 200 and isinstance(one.parsed, models.ProjectedTaskOk), one.content
        assert one.parsed.data.to_dict() == listed.to_dict()

        # 400: a parameter out of its bounds, named in `data`
        refused = running.sync_detailed(client=authorized, page_size=5000)
        assert refused.status_code == 400, refused.content
        assert isinstance(refused.parsed, models.BadRequest)
        assert refused.parsed.code == 400 and refused.parsed.message.startswith(ErrorCode.BAD_REQUEST.message)
        assert isinstance(refused.parsed.data, models.ParameterError)
        assert (refused.parsed.data.parameter, refused.parsed.data.value) == ("pageSize", "5000")

        # 401: no token, a wrong token
        for unauthorized in (anonymous, wrong):
            denied = running.sync_detailed(client=unauthorized)
            assert denied.status_code == 401, denied.content
            assert isinstance(denied.parsed, models.Unauthorized)
            assert (denied.parsed.code, denied.parsed.message) == (401, ErrorCode.UNAUTHORIZED.message)

        # 404: a task that is not running
        missing = task.sync_detailed("no-such-task", client=authorized)
        assert missing.status_code == 404, missing.content
        assert isinstance(missing.parsed, models.NotRunning)
        assert (missing.parsed.code, missing.parsed.message) == (404, "task 'no-such-task' is not running")


@pytest.mark.parametrize(
    "settings",
    [Settings(), settings_from_mapping({"auth": {"tokens": [TOKEN]}, "rate_limit": {"requests_per_second": 5}})],
    ids=["defaults", "token-and-rate-limit"],
)
def test_datamodel_code_generator_takes_the_document(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "openapi.json").write_bytes(orjson.dumps(build_document(settings)))
    output = _run(
        str(SCRIPTS / "datamodel-codegen"),
        "--input",
        "openapi.json",
        "--input-file-type",
        "openapi",
        "--output",
        "models.py",
        # its own formatter, stated: the default (black and isort) is deprecated, with a FutureWarning
        "--formatters",
        "builtin",
        cwd=tmp_path,
    )
    assert output == "", output
    _compile_strictly(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = importlib.util.spec_from_file_location("datamodel_generated_models", tmp_path / "models.py")
        assert spec is not None and spec.loader is not None
        models: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = models  # pydantic resolves the postponed annotations through it
        try:
            spec.loader.exec_module(models)
            # the models read the envelopes as the service encodes them
            models.HealthOk.model_validate_json(encode_ok(Health()))
            models.ReadyOk.model_validate_json(encode_ok(Ready(reason="fresh snapshot")))
            refused = bad_request(QueryError("pageSize", "5000", "an integer from 1 to 1000")).body
            assert models.BadRequest.model_validate_json(refused).data.parameter == "pageSize"
            gone = error_body(ErrorCode.NOT_FOUND, "task 'x' is not running")
            assert models.NotRunning.model_validate_json(gone).code == 404
            for name, (code, _) in ERRORS.items():
                if name != "NotRunning":
                    assert getattr(models, name).model_validate_json(error_body(code)).code == code.status
        finally:
            del sys.modules[spec.name]
