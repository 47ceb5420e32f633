"""The one table the bench prints: each figure, its baseline, the ratio, the target and whether it is met."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass
class Row:
    section: str
    figure: str
    value: str
    baseline: str
    ratio: str
    target: str
    met: bool | None  # None: reported, no target
    note: str = ""


def verdict(met: bool | None) -> str:
    return "—" if met is None else ("yes" if met else "NO")


_COLUMNS = ("#", "figure", "value", "baseline", "ratio", "target", "met")


def _cells(row: Row) -> tuple[str, ...]:
    return (row.section, row.figure, row.value, row.baseline, row.ratio, row.target, verdict(row.met))


def render_text(rows: list[Row]) -> str:
    cells = [_COLUMNS, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(_COLUMNS))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  [{r.section}] {r.figure}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + ([""] + ["notes:"] + notes if notes else []))


def render_markdown(rows: list[Row], header: str = "") -> str:
    lines = [header, ""] if header else []
    lines.append("| " + " | ".join(_COLUMNS) + " |")
    lines.append("|" + "---|" * len(_COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |")
    notes = [f"- **{r.section} {r.figure}**: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def render_json(rows: list[Row], meta: dict[str, object]) -> str:
    return json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2, ensure_ascii=False) + "\n"


def report(rows: list[Row], header: str, output: str | None) -> None:
    """Print the header and the table; also write it as Markdown to `output` when given."""
    print(header)
    print(render_text(rows))
    if output:
        with open(output, "w") as out:
            out.write(render_markdown(rows, header))


def file_range(text: str) -> tuple[int, int]:
    """A `--files` option's LOW-HIGH (or N) as (low, high)."""
    low, _, high = text.partition("-")
    return int(low), int(high or low)
