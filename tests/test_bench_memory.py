"""bench.memory's breakdown of a tracemalloc snapshot, in-process (quick: it runs with the unit tests, unlike the
benches marked `bench`), and the bench end to end on a tiny workload (marked `bench`)."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from bench import memory

ROOT = Path(__file__).resolve().parent.parent


def _allocate() -> list[bytes]:
    return [bytes(1000) for _ in range(2000)]  # the line sites() must find


def test_sites_finds_the_line_that_holds_the_bytes_largest_first() -> None:
    tracemalloc.start(1)
    try:
        held = _allocate()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    found = memory.sites(snapshot)
    assert [site.size for site in found] == sorted((site.size for site in found), reverse=True)
    line = _allocate.__code__.co_firstlineno + 1
    (site,) = [site for site in found if site.where == f"tests/test_bench_memory.py:{line}"]
    assert site.count >= len(held) and site.size >= len(held) * 1000
    assert site is found[0]

    rows = memory.site_rows(found, running=2000, top=3)
    assert [row.figure for row in rows] == [s.where for s in found[:3]] + ["everything traced"]
    assert rows[0].value == f"{site.size / 2000:,.0f} B/task"
    assert rows[-1].baseline == f"{sum(s.size for s in found) / 2**20:,.1f} MiB"


@pytest.mark.real_redis
@pytest.mark.bench
def test_the_bench_prints_the_resident_set_and_the_traced_lines(redis_server: object) -> None:
    # redis_server: the bench starts its own, but the fixture skips (or fails, in CI) without redis-server
    result = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--tasks", "2000", "--top", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("python -m bench.memory --tasks 2000 --files 1-4: 2,000 task keys (")
    table = [line for line in lines[3:] if line.startswith(("plain", "traced"))]
    assert [line.split()[0] for line in table] == ["plain"] * 3 + ["traced"] * 6
    assert "after one GET of the whole list" in table[1]
    assert "a whole-list GET once joined: service CPU" in table[2]
    assert "everything traced" in table[-1]
    assert any("service/" in line for line in table[3:-1])  # the service's own lines are among the largest
