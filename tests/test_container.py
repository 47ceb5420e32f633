"""The container recipe, without a container runtime: the Dockerfile is read, its build context is made the way
`docker build` makes it (the repository's files that .dockerignore lets through), and its install command, its
CMD and its HEALTHCHECK are run exactly as written, in a fresh venv standing in for the image's interpreter."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.devtools.embedded import free_port
from service.settings import Settings
from tests.conftest import first_answer

ROOT = Path(__file__).resolve().parent.parent
# how long `docker stop` waits after SIGTERM before it kills
STOP_GRACE = 10.0


# -- the Dockerfile, read ------------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    base_images: list[str] = field(default_factory=list)
    # every instruction after FROM, in order: (INSTRUCTION, arguments as written)
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [rest for name, rest in self.steps if name == instruction]

    def last(self, instruction: str) -> str:
        found = self.all(instruction)
        assert found, f"the Dockerfile has no {instruction}"
        return found[-1]

    @property
    def env(self) -> dict[str, str]:
        return {key: value for rest in self.all("ENV") for key, value in _env_pairs(rest).items()}

    @property
    def cmd(self) -> list[str]:
        return _exec_form("CMD", self.last("CMD"))

    @property
    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """The HEALTHCHECK's options (`--timeout=5s` -> {"timeout": "5s"}) and its command."""
        match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.+)", self.last("HEALTHCHECK"), re.DOTALL)
        assert match, "HEALTHCHECK must be `HEALTHCHECK [--option=value ...] CMD [...]`"
        options = dict(option[2:].split("=", 1) for option in match.group(1).split())
        return options, _exec_form("HEALTHCHECK CMD", match.group(2))


def read_dockerfile(path: Path) -> Dockerfile:
    """Instructions as Docker's parser sees them: comment lines dropped (inside continuations too), lines ending
    in a backslash joined to the next."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending.strip(), "the Dockerfile ends inside a continued line"
    parsed = Dockerfile()
    for line in logical:
        if not line.strip():
            continue
        name, _, rest = line.strip().partition(" ")
        if name.upper() == "FROM":
            parsed.base_images.append(rest.strip())
        else:
            parsed.steps.append((name.upper(), rest.strip()))
    return parsed


def _env_pairs(rest: str) -> dict[str, str]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:  # the legacy `ENV KEY value`
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def _exec_form(what: str, rest: str) -> list[str]:
    try:
        command = json.loads(rest)
    except json.JSONDecodeError:
        command = None
    # the exec form: no shell in between, so signals reach python and nothing is interpolated
    assert isinstance(command, list) and all(isinstance(word, str) for word in command), (
        f"{what} must be in exec form (a JSON array), not {rest!r}"
    )
    return command


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, f"unexpected duration {duration!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


# -- the build context: the repository's files, as .dockerignore filters them ---------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker compiles it: `*` and `?` stop at `/`, `**` crosses directories."""
    out, i = "", 0
    while i < len(text):
        if text.startswith("**", i):
            i += 2
            if text.startswith("/", i):
                i += 1
                out += "(.*/)?" if i < len(text) else ".*"
            else:
                out += ".*"
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        elif text[i] == "[":
            end = text.index("]", i)
            out, i = out + "[" + text[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out)


def dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(re-include?, pattern) per line, in order; the last pattern matching a path decides."""
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        text = os.path.normpath(line[1:].strip() if include else line).lstrip("/")
        rules.append((include, _pattern(text)))
    return rules


def ignored(rules: list[tuple[bool, re.Pattern[str]]], name: str) -> bool:
    """Whether `docker build` leaves the file `name` out: a pattern applies when it matches the path or one of the
    directories above it."""
    parts = name.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for include, pattern in rules:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = not include
    return excluded


def build_context(destination: Path) -> list[str]:
    """A clean copy of the build context at `destination`: the repository's files (tracked, and new ones git does
    not ignore; as they are in the working tree) that .dockerignore lets through. Returns their names."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    rules = dockerignore(ROOT / ".dockerignore")
    names = sorted(name for name in set(listed.split("\0")) if name and (ROOT / name).is_file())
    kept = [name for name in names if not ignored(rules, name)]
    for name in kept:
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)
    return kept


# -- what the Dockerfile says --------------------------------------------------------------------------------

DOCKERFILE = read_dockerfile(ROOT / "Dockerfile")
INSTALL = re.compile(r"(python3? -m )?pip install ")


def _procfile_web() -> list[str]:
    (web,) = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")]
    return shlex.split(web.removeprefix("web:"))


def test_a_slim_python_311_base_and_a_single_stage() -> None:
    assert len(DOCKERFILE.base_images) == 1, "one stage: the test replays it as a whole"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", DOCKERFILE.base_images[0])


def test_it_runs_as_a_non_root_user_with_a_numeric_uid() -> None:
    user = DOCKERFILE.last("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: a numeric non-root uid (Kubernetes' runAsNonRoot)"
    (useradd,) = [run for run in DOCKERFILE.all("RUN") if run.startswith("useradd ")]
    assert f"--uid {uid} " in useradd
    # USER after every RUN: the installed files stay root's, the service cannot change them
    names = [name for name, _ in DOCKERFILE.steps]
    assert names.index("USER") > max(i for i, name in enumerate(names) if name == "RUN")


def test_the_cmd_is_the_procfiles_command() -> None:
    assert DOCKERFILE.cmd == _procfile_web() == ["python", "-m", "service", "serve", "--host", "0.0.0.0"]


def test_it_installs_the_runtime_dependencies_only() -> None:
    installs = [" ".join(run.split()) for run in DOCKERFILE.all("RUN") if INSTALL.match(run)]
    assert installs == ["pip install --no-cache-dir ."], "one install, of the package itself, with no extra"
    # every other RUN is one this test knows it need not replay (it creates the user)
    assert all(INSTALL.match(run) or run.startswith("useradd ") for run in DOCKERFILE.all("RUN"))
    assert DOCKERFILE.all("COPY") == [". ."], "the whole build context, into the install's working directory"


def test_environment_port_and_healthcheck() -> None:
    env = DOCKERFILE.env
    assert env["PYTHONUNBUFFERED"] == "1"
    # PORT and REDIS_URL come from whoever runs the container; a PORT set here would override a mounted
    # settings file's server.port
    assert "PORT" not in env and "REDIS_URL" not in env
    assert DOCKERFILE.all("EXPOSE") == [str(Settings().server.port)]
    assert DOCKERFILE.last("STOPSIGNAL") == "SIGTERM"
    options, command = DOCKERFILE.healthcheck
    assert command[:2] == ["python", "-c"] and "/readyz" in command[2]
    assert _seconds(options["timeout"]) <= _seconds(options["interval"])


def test_the_build_context_holds_what_the_install_needs_and_nothing_else(tmp_path: Path) -> None:
    rules = dockerignore(ROOT / ".dockerignore")
    for junk in (
        ".git/HEAD",
        ".venv/bin/python",
        "__pycache__/x.cpython-311.pyc",
        "service/__pycache__/app.cpython-311.pyc",
        "service/snapshot/__pycache__/refresher.cpython-311.pyc",
        "service/snapshot/refresher.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/service/app.data.json",
        ".ruff_cache/CACHEDIR.TAG",
        "bench/results/run.json",
        "build/lib/service/app.py",
        "running_tasks_service.egg-info/PKG-INFO",
        "tests/conftest.py",
        "settings.toml",
        ".ci/run",
        "docs/operations.md",
        "Dockerfile",
        ".dockerignore",
    ):
        assert ignored(rules, junk), junk
    kept = build_context(tmp_path)
    assert {"pyproject.toml", "README.md", "service/__init__.py", "service/py.typed"} <= set(kept)
    assert {name.split("/")[0] for name in kept} == {"pyproject.toml", "README.md", "service"}


# -- the recipe, run ----------------------------------------------------------------------------------------


@pytest.mark.real_redis
def test_the_recipe_installs_serves_is_healthy_and_stops_cleanly(redis_url: str, tmp_path: Path) -> None:
    """`docker build` then `docker run -e PORT -e REDIS_URL`, replayed: the image's filesystem is `root`, the
    fresh venv is its interpreter (its bin/ first on PATH is the only substitution), every command is the
    Dockerfile's text run as Docker runs it."""
    root, venv = tmp_path / "root", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    path = f"{venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin"
    environment: dict[str, str] = {}
    workdir = root
    installed = False
    for instruction, rest in DOCKERFILE.steps:
        if instruction == "ENV":
            environment.update(_env_pairs(rest))
        elif instruction == "WORKDIR":
            workdir = root / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            build_context(workdir)
        elif instruction == "RUN" and INSTALL.match(rest):
            # this machine's pip configuration (index, proxy) with the image's environment on top
            env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
            env.update(environment, PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
            install = subprocess.run(
                ["/bin/sh", "-c", rest], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
            )
            assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
            installed = True
    assert installed
    assert workdir != root / "src" and not any(workdir.iterdir()), "the service runs in an empty directory"

    port = free_port()
    # the container's environment: the image's ENV, then `docker run -e PORT=... -e REDIS_URL=...`
    env = {"PATH": path, "HOME": str(tmp_path / "nonexistent"), "LANG": "C.UTF-8", **environment}
    env.update(PORT=str(port), REDIS_URL=redis_url)
    assert shutil.which("python", path=path) == str(venv / "bin" / "python")

    probe = "import json, importlib.metadata as m, service; print(json.dumps([service.__file__, "
    probe += "[d.metadata['Name'].lower() for d in m.distributions()], "
    probe += "m.metadata('running-tasks-service').get_payload()]))"
    where = subprocess.run(["python", "-c", probe], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    module, distributions, description = json.loads(where.stdout)
    assert Path(module).is_relative_to(venv), "the installed package runs, not the sources"
    assert description.startswith("# Running tasks service"), "the package's description is README.md"
    assert "running-tasks-service" in distributions
    assert not {"fakeredis", "pytest", "httpx", "mypy", "ruff", "schemathesis"} & set(distributions)

    options, healthcheck_command = DOCKERFILE.healthcheck
    timeout = _seconds(options["timeout"])

    def healthcheck() -> int:
        result = subprocess.run(healthcheck_command, cwd=workdir, env=env, capture_output=True, timeout=timeout)
        return result.returncode

    assert healthcheck() == 1, "nothing listens yet: unhealthy (1; Docker reserves 2)"
    server = subprocess.Popen(DOCKERFILE.cmd, cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
    try:
        ready = first_answer(server, f"http://127.0.0.1:{port}/readyz", 60)
        assert ready.status_code == 200, ready.text
        assert healthcheck() == 0
        stopped = time.monotonic()
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=STOP_GRACE)
        took = time.monotonic() - stopped
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err[-3000:]
    assert took < STOP_GRACE
    assert "Application shutdown complete." in err and "Traceback" not in err
    assert f"Uvicorn running on http://0.0.0.0:{port}" in err
    assert healthcheck() == 1

    # a bad value in the environment stops startup with one line naming the setting and the value
    bad = subprocess.run(
        DOCKERFILE.cmd, cwd=workdir, env={**env, "PORT": "http"}, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == "error: invalid settings: server.port = 'http': expected an integer"
