# The service as a container: `docker build -t running-tasks .`, then
#   docker run -p 8000:8000 -e REDIS_URL=redis://redis.internal:6379/0 running-tasks
# PORT (default 8000, server.port) and REDIS_URL come from the environment, as every SERVICE__<SECTION>__<KEY>
# does; a settings file can be mounted at /app/settings.toml (or named by SERVICE_SETTINGS).
# No container runtime runs in CI: tests/test_container.py replays this file's install command, CMD and
# HEALTHCHECK in a fresh venv from the build context .dockerignore lets through. Keep them replayable: one
# `pip install` RUN, exec-form CMD and HEALTHCHECK, no shell in between.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# runtime dependencies only (no extra: no demo, no test tooling); the context is pyproject.toml, README.md and
# service/ (.dockerignore)
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir .

# a fixed numeric uid, so that Kubernetes' runAsNonRoot can check it
RUN useradd --uid 10001 --user-group --no-create-home --no-log-init --home-dir /nonexistent --shell /usr/sbin/nologin app

# an empty working directory: settings.toml here is read when mounted, else the built-in defaults apply
WORKDIR /app
USER 10001:10001

# server.port's default; PORT is deliberately not set here, so that a mounted settings file's port is not overridden
EXPOSE 8000

# /readyz on the port the service listens on, found as the service finds it (PORT, SERVICE__SERVER__PORT,
# settings.toml, default); not ready (503, refused, timeout) -> exit 1. Python's urllib: slim has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; from service.settings import load_settings as s; u.urlopen(f'http://127.0.0.1:{s().server.port}/readyz', timeout=4)"]

# uvicorn shuts down gracefully on SIGTERM and the process exits 0 (python is PID 1: exec form, no shell)
STOPSIGNAL SIGTERM

# the Procfile's command, exactly
CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0"]
