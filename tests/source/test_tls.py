"""TLS as docs/operations.md describes it: a `rediss://` URL with redis-py's query parameters (`ssl_ca_certs`,
`ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs`) against a real redis-server with `--tls-port`, a CA made here
and client certificates required."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis

from service.devtools.embedded import RedisServerProcess, free_port
from service.http.app import create_app
from service.settings import SettingsError, settings_from_mapping
from tests.conftest import make_settings, running_app

pytestmark = [pytest.mark.real_redis, pytest.mark.anyio]
RUNNING = "/codebase-embedder/api/v1/tasks/running"
VALUE = b'{"process":"processing","totalProgress":40,"fileList":null}'


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)  # fmt: skip
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)  # fmt: skip
        extensions = ["-extfile", "server.ext"] if name == "server" else []
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.crt", *extensions, cwd=directory)  # fmt: skip


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServerProcess, int, Path]]:
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        if os.environ.get("REQUIRE_REAL_REDIS"):
            pytest.fail("redis-server and openssl are needed")
        pytest.skip("redis-server or openssl is not installed")
    _certificates(tmp_path)
    tls_port = free_port()
    server = RedisServerProcess(
        extra_args=(
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(tmp_path / "server.crt"),
            "--tls-key-file", str(tmp_path / "server.key"),
            "--tls-ca-cert-file", str(tmp_path / "ca.crt"),
            "--tls-auth-clients", "yes",
        )
    )  # fmt: skip
    redis.Redis(port=server.port).set("request:id:over-tls", VALUE)
    yield server, tls_port, tmp_path
    server.close()


def _url(port: int, **params: str) -> str:
    return f"rediss://127.0.0.1:{port}/0?{urlencode(params)}"


def _client_certificate(directory: Path) -> dict[str, str]:
    return {
        "ssl_ca_certs": str(directory / "ca.crt"),
        "ssl_certfile": str(directory / "client.crt"),
        "ssl_keyfile": str(directory / "client.key"),
        "ssl_cert_reqs": "required",
    }


def test_scan_over_tls_with_a_client_certificate(tls_redis: tuple[RedisServerProcess, int, Path]) -> None:
    _, port, directory = tls_redis
    url = _url(port, **_client_certificate(directory))
    scanned = subprocess.run(
        [sys.executable, "-m", "service", "scan", "--redis-url", url], capture_output=True, text=True, timeout=60
    )
    assert scanned.returncode == 0, scanned.stderr
    assert "over-tls" in scanned.stdout
    assert "1 running of" in scanned.stdout


async def test_the_service_serves_over_tls(tls_redis: tuple[RedisServerProcess, int, Path]) -> None:
    _, port, directory = tls_redis
    app = create_app(make_settings(url=_url(port, **_client_certificate(directory))))
    async with running_app(app) as http:
        answer = await http.get(RUNNING)
    assert answer.status_code == 200
    assert [task["taskId"] for task in answer.json()["data"]["tasks"]] == ["over-tls"]


@pytest.mark.parametrize("missing", ["ssl_certfile", "ssl_ca_certs"])
async def test_without_the_client_certificate_or_the_ca_redis_is_unavailable(
    tls_redis: tuple[RedisServerProcess, int, Path], missing: str
) -> None:
    _, port, directory = tls_redis
    params = _client_certificate(directory)
    del params[missing]
    if missing == "ssl_certfile":
        del params["ssl_keyfile"]
    app = create_app(make_settings(url=_url(port, **params), redis_timeout=2000))
    async with running_app(app) as http:
        answer = await http.get(RUNNING)
    assert answer.status_code == 503
    assert answer.json()["code"] == 503


async def test_the_tls_settings_instead_of_the_url_query(tls_redis: tuple[RedisServerProcess, int, Path]) -> None:
    _, port, directory = tls_redis
    redis_section = {
        "url": f"rediss://127.0.0.1:{port}/0",
        "tls_ca_cert_file": str(directory / "ca.crt"),
        "tls_cert_file": str(directory / "client.crt"),
        "tls_key_file": str(directory / "client.key"),
    }
    app = create_app(make_settings(redis=redis_section))
    async with running_app(app) as http:
        answer = await http.get(RUNNING)
    assert [task["taskId"] for task in answer.json()["data"]["tasks"]] == ["over-tls"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("tls_ca_cert_file", r"^redis.tls_ca_cert_file = '.*/nowhere.crt': no such file$"),
        ("tls_cert_file", r"^redis.tls_cert_file = '.*/nowhere.crt': no such file$"),
    ],
)
def test_a_missing_tls_file_is_named(tmp_path: Path, setting: str, message: str) -> None:
    (tmp_path / "client.key").write_text("key")
    section = {"url": "rediss://cache:6380/0", setting: str(tmp_path / "nowhere.crt"),
               "tls_key_file": str(tmp_path / "client.key")}  # fmt: skip
    if setting != "tls_cert_file":
        del section["tls_key_file"]
    with pytest.raises(SettingsError, match=message):
        settings_from_mapping({"redis": section})


def test_tls_files_need_a_tls_url_and_each_other(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("ca")
    with pytest.raises(SettingsError, match=r"^redis.tls_ca_cert_file = '.*': TLS needs a rediss:// url"):
        settings_from_mapping({"redis": {"url": "redis://cache:6379/0", "tls_ca_cert_file": str(tmp_path / "ca.crt")}})
    with pytest.raises(SettingsError, match=r"^redis.tls_cert_file = '.*': needs redis.tls_key_file too"):
        settings_from_mapping({"redis": {"url": "rediss://cache/0", "tls_cert_file": str(tmp_path / "ca.crt")}})
    with pytest.raises(SettingsError, match=r"^redis.url \(ssl_ca_certs\) = '/nowhere/ca.crt': no such file"):
        settings_from_mapping({"redis": {"url": "rediss://cache/0?ssl_ca_certs=/nowhere/ca.crt"}})


def test_serve_with_a_missing_certificate_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "SERVICE__REDIS__URL": "rediss://127.0.0.1:1/0",
           "SERVICE__REDIS__TLS_CA_CERT_FILE": str(tmp_path / "gone.crt")}  # fmt: skip
    served = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert served.returncode == 2
    assert served.stderr.strip().splitlines() == [
        f"error: invalid settings: redis.tls_ca_cert_file = '{tmp_path / 'gone.crt'}': no such file"
    ]
