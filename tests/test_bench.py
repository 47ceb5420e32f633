"""The bench's quick mode on a tiny workload: it runs end to end and prints its one table. Timings are the
bench's business; nothing here looks at them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.real_redis


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
