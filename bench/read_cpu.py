"""Where a small read's time goes: requests/s and the server's CPU time per request (from /proc) of the service's
304 and gzip polls against the bare endpoints (plain, and sending the service's very headers), through uvicorn
under wrk, pinned as the bench pins them. The bench's table gives the ratios; this gives the microseconds.

    .venv/bin/python -m bench.read_cpu [--rounds 3] [--seconds 4] [--variant NAME=KEY:VALUE[,KEY:VALUE]]

A variant is the service again with environment overrides, measured in the same rounds, e.g.
`--variant no-access-log=SERVICE__LOGGING__ACCESS_LOG:false`. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bench import workload
from bench.__main__ import RUNNING_PATH, _bare
from bench.processes import Server, closed_loop, cpu_seconds, service_env
from bench.served import BARE_PATHS, SAME_HEADERS_PATHS


def _measure(server: Server, path: str, headers: dict[str, str], seconds: float) -> tuple[float, float]:
    before = cpu_seconds(server.process.pid)
    load = closed_loop(server.url(path), seconds, headers=headers)
    return load.rps, (cpu_seconds(server.process.pid) - before) / max(1, load.requests) * 1e6


def _variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, overrides = text.partition("=")
    return name, dict(item.split(":", 1) for item in overrides.split(",") if item)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.read_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--variant", action="append", default=[], type=_variant)
    args = parser.parse_args()
    loads = asyncio.run(workload.build(workload.Sizes(tasks=200, unrelated=200)))
    servers: dict[str, Server] = {}
    try:
        env = service_env(loads.url(workload.SMALL_DB), refresh_interval=60)
        servers["service"] = Server("bench.served:service_app", env, "/readyz")
        for name, overrides in args.variant:
            servers[name] = Server("bench.served:service_app", {**env, **overrides}, "/readyz")
        _, headers, body = servers["service"].get(RUNNING_PATH)
        _, gz_headers, gzipped = servers["service"].get(RUNNING_PATH, {"Accept-Encoding": "gzip"})
        _, not_modified, _ = servers["service"].get(RUNNING_PATH, {"If-None-Match": headers["etag"]})
        sent = {"identity": headers, "gzip": gz_headers, "not_modified": not_modified}
        bare = servers["bare"] = _bare(body, gzipped, Path(tempfile.mkdtemp()), "small", sent)
        gzip = {"Accept-Encoding": "gzip"}
        cases: list[tuple[str, Server, str, dict[str, str]]] = [
            ("304, bare", bare, BARE_PATHS["not_modified"], {}),
            ("304, bare with the same headers", bare, SAME_HEADERS_PATHS["not_modified"], {}),
            ("gzip, bare", bare, BARE_PATHS["gzip"], gzip),
            ("gzip, bare with the same headers", bare, SAME_HEADERS_PATHS["gzip"], gzip),
        ]
        for name, server in servers.items():
            if name != "bare":
                etag = server.get(RUNNING_PATH)[1]["etag"]  # each process has its own ETags
                cases += [
                    (f"304, {name}", server, RUNNING_PATH, {"If-None-Match": etag}),
                    (f"gzip, {name}", server, RUNNING_PATH, gzip),
                ]
        results: dict[str, list[tuple[float, float]]] = {label: [] for label, *_ in cases}
        for _ in range(args.rounds):  # interleaved, so that the machine's drift hits every case alike
            for label, server, path, request_headers in cases:
                results[label].append(_measure(server, path, request_headers, args.seconds))
        print(f"50 tasks, wrk -c32, {args.rounds} x {args.seconds:g} s each, medians")
        print(f"{'case':<40} {'req/s':>10} {'server CPU us/request':>22}")
        for label, runs in sorted(results.items()):
            rps = statistics.median(r for r, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            print(f"{label:<40} {rps:>10,.0f} {cpu:>22.1f}")
    finally:
        for server in servers.values():
            server.stop()
        loads.server.close()


if __name__ == "__main__":
    main()
