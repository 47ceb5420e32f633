"""What a production install brings: the runtime dependencies only. Development tooling is an extra."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from service.devtools.embedded import free_port
from tests.conftest import first_answer


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


def test_the_console_script_and_the_version() -> None:
    scripts = [entry for entry in metadata.entry_points(group="console_scripts") if entry.name == "running-tasks"]
    assert [entry.value for entry in scripts] == ["service.cli:main"]
    version = metadata.version("running-tasks-service")
    for command in ([sys.executable, "-m", "service", "--version"], [sys.executable, "-c", _SCRIPT, "--version"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(f" {version}")


# what the console script runs, as its wrapper does
_SCRIPT = "import sys; from service.cli import main; sys.argv[0] = 'running-tasks'; sys.exit(main())"


def test_the_wheel_holds_every_package_and_says_it_is_typed(tmp_path: Path) -> None:
    # what `pip install .` installs: the wheel, built from this tree
    root = Path(__file__).resolve().parent.parent
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(root)]
    result = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("running_tasks_service-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "service/py.typed" in names
    packages = {path.parent.relative_to(root).as_posix() for path in (root / "service").rglob("__init__.py")}
    assert {name.rsplit("/", 1)[0] for name in names if name.endswith("/__init__.py")} == packages
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


@pytest.mark.real_redis
def test_an_installed_service_reads_the_settings_toml_of_its_working_directory(redis_url: str, tmp_path: Path) -> None:
    """A non-editable install (the wheel, in a venv of its own) run in a directory holding settings.toml reads
    that file, says so at startup and in cache-stats; in a directory without one it runs on the defaults."""
    root = Path(__file__).resolve().parent.parent
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(root)]
    assert subprocess.run(build, capture_output=True, timeout=300).returncode == 0
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (wheel,) = wheels.glob("*.whl")
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True, timeout=600
    )
    assert install.returncode == 0, install.stderr[-2000:]
    here = tmp_path / "deploy"
    here.mkdir()
    port = free_port()
    (here / "settings.toml").write_text(f"[server]\nport = {port}\n\n[running_tasks]\nstall_after = 123\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("SERVICE")}
    env.update(REDIS_URL=redis_url)
    server = subprocess.Popen(
        [str(venv / "bin" / "running-tasks"), "serve"], cwd=here, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        stats = first_answer(server, f"http://127.0.0.1:{port}/codebase-embedder/api/v1/tasks/cache-stats", 60)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    data = stats.json()["data"]
    assert data["settingsFile"] == str((here / "settings.toml").resolve())
    assert data["settings"]["running_tasks"]["stall_after"] == 123
    assert f"settings: read from {(here / 'settings.toml').resolve()}" in err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = "from service.settings import Settings, load_settings, settings_file; "
    probe += "print(settings_file(), load_settings() == Settings())"
    defaults = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        cwd=elsewhere,
        env={key: value for key, value in env.items() if key not in ("REDIS_URL", "PORT")},
        capture_output=True,
        text=True,
    )
    assert defaults.stdout.split() == ["None", "True"], defaults.stderr
