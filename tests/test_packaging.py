"""What a production install brings: the runtime dependencies only. Development tooling is an extra."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from importlib import metadata


def _runtime_requirements() -> list[str]:
    requires = metadata.requires("running-tasks-service") or []
    return [req for req in requires if "extra ==" not in req]


def test_a_production_install_does_not_pull_the_development_tooling() -> None:
    names = {re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower() for req in _runtime_requirements()}
    assert "fakeredis" not in names
    assert {"starlette", "uvicorn", "redis", "apscheduler", "msgspec", "orjson", "prometheus-client"} <= names
    extras = metadata.requires("running-tasks-service") or []
    assert any(req.startswith("fakeredis") and 'extra == "demo"' in req for req in extras)


def test_redis_is_bounded_above_since_its_connection_internals_are_used() -> None:
    (redis,) = [req for req in _runtime_requirements() if req.startswith("redis")]
    assert "<" in redis


def test_the_service_imports_without_fakeredis() -> None:
    # a production install has no fakeredis: the app, the settings and the scan must not need it
    code = textwrap.dedent(
        """
        import sys
        sys.modules["fakeredis"] = None  # importing it now fails as if it were not installed
        import service.app, service.cli, service.http.app
        from service.http.app import create_app
        from service.settings import Settings
        create_app(Settings())
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_demo_without_redis_server_or_fakeredis_says_what_to_install() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["fakeredis"] = None
        from service.cli import main
        sys.exit(main(["demo", "--port", "0", "--redis", "fakeredis"]))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "pip install -e '.[demo]'" in result.stderr
    assert "Traceback" not in result.stderr
