"""A separate Redis client timing its own small commands: what the service's refresh costs everyone else.

python -m bench.redisprobe REDIS_URL --duration 5  -> one JSON line of percentiles in ms."""

from __future__ import annotations

import argparse
import json
import time

import redis


def probe(url: str, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    with redis.Redis.from_url(url) as client:
        client.set("bench:probe", b"x" * 64)
        deadline = time.perf_counter() + duration
        while (started := time.perf_counter()) < deadline:
            client.get("bench:probe")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.0005)  # a client going about its business, not a flood
        client.delete("bench:probe")
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000

    return {
        "commands": len(latencies),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": latencies[-1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redisprobe")
    parser.add_argument("url")
    parser.add_argument("--duration", type=float, default=5)
    args = parser.parse_args()
    print(json.dumps(probe(args.url, args.duration)))


if __name__ == "__main__":
    main()
