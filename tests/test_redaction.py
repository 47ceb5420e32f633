"""Credentials in a Redis URL never shown, however the URL carries them: cache-stats, the CLI's errors and the
simulator's banner (issue 15, item 8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.devtools.embedded import free_port
from service.settings import redact_url, settings_from_mapping

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://user:{SECRET}@h:6379/0", "redis://user:***@h:6379/0"),
        (f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
        (f"rediss://default:{SECRET}@h:6380/1?ssl_cert_reqs=none", "rediss://default:***@h:6380/1?ssl_cert_reqs=none"),
        (f"redis://h:6379/0?password={SECRET}", "redis://h:6379/0?password=***"),
        (
            f"redis://h:6379/0?db=2&PASSWORD={SECRET}&socket_timeout=1",
            "redis://h:6379/0?db=2&PASSWORD=***&socket_timeout=1",
        ),
        (f"redis://h/0?pass%77ord={SECRET}", "redis://h/0?pass%77ord=***"),
        (f"rediss://h/0?ssl_password={SECRET}&ssl_keyfile=/k.pem", "rediss://h/0?ssl_password=***&ssl_keyfile=***"),
        (f"redis://u:{SECRET}@h/0?password={SECRET}", "redis://u:***@h/0?password=***"),
        (f"unix://:{SECRET}@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        (f"unix:///run/redis.sock?db=0&password={SECRET}", "unix:///run/redis.sock?db=0&password=***"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://h:6379/0?db=1", "redis://h:6379/0?db=1"),
    ],
)
def test_every_credential_of_a_url_is_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_url(url)


def test_a_url_that_does_not_parse_shows_nothing_of_itself() -> None:
    assert redact_url(f"redis://u:{SECRET}@h:99999999/0") == "***"


def test_the_settings_in_effect_mask_the_url() -> None:
    settings = settings_from_mapping({"redis": {"url": f"redis://h:6379/0?password={SECRET}"}})
    assert SECRET not in str(settings.redacted())


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("form", ["query", "userinfo"])
def test_the_cli_never_prints_the_password(form: str) -> None:
    port = free_port()  # nothing listens there
    url = (
        f"redis://127.0.0.1:{port}/0?password={SECRET}" if form == "query" else f"redis://u:{SECRET}@127.0.0.1:{port}/0"
    )
    scan = _run("scan", "--redis-url", url, "--max-scan-time", "2000")
    simulate = _run("simulate", "--redis-url", url, "--duration", "1")
    assert scan.returncode == 1 and simulate.returncode == 1
    for result in (scan, simulate):
        assert "cannot reach Redis" in result.stderr
        assert SECRET not in result.stderr + result.stdout
        assert "***" in result.stderr
