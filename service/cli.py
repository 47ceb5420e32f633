"""The command line: `python -m service serve | scan | demo | simulate`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

import redis.asyncio as aioredis
import uvicorn

from service import __version__
from service.domain.times import format_time
from service.settings import (
    ServerSettings,
    Settings,
    SettingsError,
    load_settings,
    log_settings_source,
    redact_url,
    settings_file,
)
from service.snapshot.refresher import RefreshFailed
from service.snapshot.snapshot import Snapshot
from service.source.failures import Failure
from service.source.scanner import ScanStats

logger = logging.getLogger("service.cli")


def _settings(args: argparse.Namespace, **running_tasks: object) -> Settings:
    """Settings from --settings (or the usual file and environment) with the command's options on top."""
    env = dict(os.environ)
    if args.settings:
        env["SERVICE_SETTINGS"] = args.settings
    for key, value in running_tasks.items():
        if value is not None:
            env[f"SERVICE__RUNNING_TASKS__{key.upper()}"] = str(value)
    if getattr(args, "redis_url", None):
        env["SERVICE__REDIS__URL"] = args.redis_url  # the command line beats every variable (REDIS_URL included)
    return load_settings(env=env)


# -- serve ---------------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from service.http.access_log import configure_logging
    from service.http.app import create_app
    from service.http.server import Server, ServerLimits, fit_to_fd_limit, uvicorn_config

    settings = _settings(args)
    given = {name: getattr(args, name) for name in _LIMITS if getattr(args, name) is not None}
    try:
        limits = dataclasses.replace(ServerLimits.from_settings(settings.server), **given)
    except ValueError as exc:
        print(f"error: invalid server limits: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    source = settings_file(args.settings)
    log_settings_source(source)
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    limits = fit_to_fd_limit(limits)  # raises the process's file descriptor limit if it must
    # As the Procfile runs it: our log format (log_config=None keeps uvicorn from replacing it), one access line
    # per request (ours, not uvicorn's), and forwarded addresses believed only by our middleware, and only from
    # server.trusted_proxies (uvicorn would trust X-Forwarded-For from 127.0.0.1 by default). Our HTTP protocol
    # caps the size of request heads and the time to send them (service.http.server).
    app = create_app(settings, settings_from=source)
    config = uvicorn_config(
        app,
        host,
        port,
        limits,
        log_level=settings.server.log_level,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )
    server = Server(config, on_shutdown=app.state.streams.close)  # ends the event streams first
    _exit_cleanly_on_sigterm(server)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    # as uvicorn.run: a server that did not start (port taken, lifespan failed) exits with 3
    return 0 if server.started else 3


_LIMITS = ("max_header_bytes", "header_timeout", "keep_alive_timeout", "max_connections")


def _exit_cleanly_on_sigterm(server: uvicorn.Server) -> None:
    """SIGTERM (docker stop, Kubernetes, systemd) is a normal stop: after uvicorn's graceful shutdown the process
    exits with 0. uvicorn handles SIGTERM while it serves, then raises it again for the handler it found in place,
    which decides: the default one would kill the process (exit status 143), except as a container's PID 1, whose
    default-handled signals the kernel ignores (exit 0); with this one it is 0 everywhere. A SIGTERM in the moment
    before uvicorn takes over exits at once, also with 0."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if not server.should_exit:  # not uvicorn's own, raised again after its shutdown
            raise SystemExit(0)

    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, on_sigterm)


# -- scan ----------------------------------------------------------------------------------------------------

_COLUMNS = ("TASK", "CLIENT", "STATUS", "PROGRESS", "STARTED", "LAST UPDATE", "ETA", "FILES")


def render_table(snapshot: Snapshot) -> str:
    """The running tasks as an aligned text table, newest start first."""
    rows = [_COLUMNS]
    for task in snapshot.tasks:
        rows.append(
            (
                task.task_id,
                task.client_id or "-",
                task.process,
                f"{task.total_progress}%",
                format_time(task.start_ms),
                format_time(task.update_ms),
                "-" if task.eta_ms is None else format_time(task.eta_ms),
                str(task.file_count),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    stats = snapshot.stats
    lines.append(
        f"{len(snapshot.tasks)} running of {stats.keys_scanned} keys scanned "
        f"({stats.finished} finished, {stats.malformed} malformed, {stats.expired} expired) "
        f"in {stats.duration_ms:.0f} ms"
    )
    return "\n".join(lines)


def _progress_line(stats: ScanStats, elapsed: float) -> str:
    rate = stats.keys_scanned / elapsed if elapsed > 0 else 0.0
    return f"\rscanning: {stats.keys_scanned} keys, {stats.pages} pages, {stats.matched} running, {rate:,.0f} keys/s"


async def _scan(args: argparse.Namespace, settings: Settings) -> Snapshot:
    from service.snapshot.pipeline import build_pipeline
    from service.source.clients import create_client

    client = create_client(settings)
    pipeline = build_pipeline(settings, client)
    refresher = pipeline.refresher
    show_progress = sys.stderr.isatty() and not args.quiet
    scan = asyncio.create_task(refresher.refresh("cli"))
    started = time.monotonic()
    try:
        while show_progress and not scan.done():
            await asyncio.wait([scan], timeout=0.1)
            current = refresher.scanner.current
            if current is not None:
                sys.stderr.write(_progress_line(current, time.monotonic() - started))
                sys.stderr.flush()
        return await scan
    finally:
        if show_progress:
            sys.stderr.write("\r\033[K")
        await pipeline.source.aclose()
        await client.aclose()


def cmd_scan(args: argparse.Namespace) -> int:
    settings = _settings(
        args,
        key_pattern=args.pattern,
        scan_batch_size=args.batch_size,
        worker_count=args.workers,
        max_scan_time=args.max_scan_time,
    )
    try:
        snapshot = asyncio.run(_scan(args, settings))
    except RefreshFailed as failure:
        reason = {
            Failure.REDIS_UNAVAILABLE: "cannot reach Redis",
            Failure.TIMEOUT: "scan timed out",
        }.get(failure.failure, "scan failed")
        print(f"error: {reason} at {redact_url(settings.redis.url)}: {failure.detail}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(bytes(snapshot.body) + b"\n")
    else:
        print(render_table(snapshot))
    return 0


# -- simulate ------------------------------------------------------------------------------------------------


async def _simulate(args: argparse.Namespace) -> None:
    from service.devtools.simulator import Simulator

    client = aioredis.Redis.from_url(args.redis_url)
    simulator = Simulator(args.seed, key_ttl=args.key_ttl, files=args.files)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if args.duration:
        loop.call_later(args.duration, stop.set)
    try:
        await client.ping()
        if args.anomalies:
            await simulator.write_anomalies(client)
        print(f"simulating {args.tasks} tasks against {redact_url(args.redis_url)} (Ctrl-C stops)", file=sys.stderr)
        await simulator.run(
            client, tasks=args.tasks, interval=args.interval, stop=stop, clock=lambda: int(time.time() * 1000)
        )
    finally:
        await client.aclose()


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_simulate(args))
    except (OSError, aioredis.ConnectionError) as exc:
        print(f"error: cannot reach Redis at {redact_url(args.redis_url)}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


# -- demo ----------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from service.devtools.demo import run_demo

    return run_demo(
        host=args.host, port=args.port, tasks=args.tasks, seed=args.seed, redis_kind=args.redis, cluster=args.cluster
    )


# -- parser --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service", description="Run the service (as the Procfile).")
    serve.add_argument("--host", help="address to listen on (default: server.host of the settings)")
    serve.add_argument("--port", type=int, help="port to listen on (default: $PORT or server.port)")
    serve.add_argument(
        "--settings", help="settings file (default: $SERVICE_SETTINGS, else ./settings.toml, else built-in defaults)"
    )
    limits = ServerSettings()
    serve.add_argument(
        "--max-header-bytes",
        type=int,
        metavar="BYTES",
        help=f"largest request head (request line and headers); past it 431 and close "
        f"(default: server.max_header_bytes, {limits.max_header_bytes})",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="time to send a request's head from its first byte, and a new connection's first byte; "
        f"past it 408 and close (default: server.header_timeout, {limits.header_timeout:g})",
    )
    serve.add_argument(
        "--keep-alive-timeout",
        type=int,
        metavar="SECONDS",
        help="idle time of a keep-alive connection between requests "
        f"(default: server.keep_alive_timeout, {limits.keep_alive_timeout})",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open connections at which further requests get 503; the file descriptor limit is raised to fit "
        f"(default: server.max_connections, {limits.max_connections})",
    )
    serve.set_defaults(func=cmd_serve)

    scan = commands.add_parser(
        "scan",
        help="one live scan of a Redis, printed",
        description="Scan a Redis once and print its running tasks as a table, or as the endpoint's JSON body.",
    )
    scan.add_argument("--redis-url", help="Redis to scan (default: $REDIS_URL or redis.url of the settings)")
    scan.add_argument("--pattern", help="key pattern (default: running_tasks.key_pattern, request:id:*)")
    scan.add_argument("--batch-size", type=int, help="SCAN COUNT and keys per value fetch (default: 100)")
    scan.add_argument("--workers", type=int, help="concurrent fetch-and-decode workers (default: 10)")
    scan.add_argument("--max-scan-time", type=int, help="budget of the scan in ms (default: 10000)")
    scan.add_argument("--json", action="store_true", help="print exactly the body GET .../tasks/running returns")
    scan.add_argument("--quiet", action="store_true", help="no progress indicator even on a terminal")
    scan.add_argument(
        "--settings", help="settings file (default: $SERVICE_SETTINGS, else ./settings.toml, else built-in defaults)"
    )
    scan.set_defaults(func=cmd_scan)

    demo = commands.add_parser(
        "demo",
        help="the service on an embedded Redis with a moving simulated workload",
        description="Start an embedded Redis (redis-server if installed, else fakeredis), a producer simulator "
        "and the service; print the URLs to open. Ctrl-C stops everything.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    demo.add_argument("--tasks", type=int, default=12, help="running tasks to keep moving (default: 12)")
    demo.add_argument("--seed", type=int, default=1, help="simulator seed (default: 1)")
    demo.add_argument(
        "--redis",
        choices=("auto", "redis-server", "fakeredis"),
        default="auto",
        help="embedded Redis: redis-server when installed, else fakeredis (default: auto)",
    )
    demo.add_argument(
        "--cluster",
        action="store_true",
        help="on a local Redis Cluster of three primaries (needs redis-server and redis-cli), in cluster mode",
    )
    demo.set_defaults(func=cmd_demo)

    simulate = commands.add_parser(
        "simulate",
        help="run the producer simulator against a Redis",
        description="Write task statuses to a Redis the way the embedder does, for load and manual testing.",
    )
    simulate.add_argument("--redis-url", required=True, help="Redis to write to")
    simulate.add_argument("--tasks", type=int, default=50, help="running tasks to keep alive (default: 50)")
    simulate.add_argument("--files", type=int, help="files per task (default: realistic mix, 5-50, 1%% 2000)")
    simulate.add_argument("--seed", type=int, default=0, help="random seed: same seed, same data (default: 0)")
    simulate.add_argument("--interval", type=float, default=2.0, help="seconds between updates (default: 2)")
    simulate.add_argument("--key-ttl", type=int, default=3600, help="EX of every write, in s (default: 3600)")
    simulate.add_argument("--duration", type=float, help="stop after this many seconds (default: run until Ctrl-C)")
    simulate.add_argument("--anomalies", action="store_true", help="also write the malformed keys producers leave")
    simulate.set_defaults(func=cmd_simulate)
    return parser


def _prog() -> str:
    # `running-tasks` (the console script) or `python -m service`, as it was started
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m service" if name in ("", "__main__.py", "-c") else name


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # commands report their own errors in one line; the library logs only what is worse
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    return code
