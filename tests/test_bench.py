"""The bench's quick mode on a tiny workload: it runs end to end and prints its one table. Timings are the
bench's business; nothing here looks at them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.real_redis, pytest.mark.bench]


def test_quick_mode_prints_one_table_with_every_figure(redis_server: object, tmp_path: Path) -> None:
    # redis_server: the bench starts its own, but the fixture skips (or fails, in CI) without redis-server
    out_json, out_md = tmp_path / "table.json", tmp_path / "table.md"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--tasks",
            "300",
            "--output",
            str(out_json),
            "--output",
            str(out_md),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("python -m bench --quick --tasks 300: 300 task keys")
    assert lines[1].split() == ["#", "figure", "value", "baseline", "ratio", "target", "met"]
    table = json.loads(out_json.read_text())
    rows = table["rows"]
    assert {row["section"] for row in rows} == {"1", "2", "3", "4", "5", "6", "7"}
    assert all(row["met"] in (True, False, None) for row in rows)
    assert all(row["value"] and row["target"] for row in rows)
    assert table["meta"]["task_keys"] == 300
    markdown = out_md.read_text()
    assert markdown.count("\n| ") == len(rows) + 1  # the header row and one row per figure
    for row in rows:
        assert row["figure"] in result.stdout


def test_read_cpu_prints_each_case_with_its_rate_and_cpu(redis_server: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.read_cpu", "--rounds", "1", "--seconds", "1", "--variant", "quiet=X:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line[:40].strip(): line[40:].split() for line in result.stdout.splitlines()[2:]}
    cases = [f"{kind}, {side}" for kind in ("304", "gzip") for side in ("bare", "bare with the same headers")]
    cases += [f"{kind}, {name}" for kind in ("304", "gzip") for name in ("service", "quiet")]
    assert sorted(rows) == sorted(cases)
    for rps, cpu in rows.values():
        assert float(rps.replace(",", "")) > 0 and float(cpu) > 0  # measured, not asserted against a number


@pytest.mark.parametrize(
    ("ratio", "target", "shown"),
    [
        (0.8953, "at least 0.9", "0.895"),  # not "0.90" beside "NO"
        (0.9312, "at least 0.9", "0.93"),
        (1.5004, "at most 1.5", "1.5004"),
        (1.4996, "at most 1.5", "1.50"),  # met, and shown so
        (2.999, "below 3", "2.999"),
    ],
)
def test_a_ratio_is_never_shown_on_the_wrong_side_of_its_target(ratio: float, target: str, shown: str) -> None:
    from bench.__main__ import _AT_LEAST_0_9, _AT_MOST_1_5, _BELOW_3, _shown

    met = {"at least 0.9": _AT_LEAST_0_9, "at most 1.5": _AT_MOST_1_5, "below 3": _BELOW_3}[target]
    assert _shown(ratio, met) == shown
