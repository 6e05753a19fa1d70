"""Markdown summaries of a stage's outputs, for Prefect artifacts and `tunefold status`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunefold.pipeline.dag import Stage


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _flat(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in _flat(v, f"{prefix}{k}.")]
    return [(prefix[:-1], obj)]


def stage_metrics(stage: Stage, root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in stage.metrics:
        path = root / m
        if path.exists():
            out.update(json.loads(path.read_text(encoding="utf-8")))
    return out


def stage_summary(stage: Stage, root: Path) -> str:
    metrics = stage_metrics(stage, root)
    lines = [f"## Stage `{stage.name}`", ""]
    if isinstance(record := metrics.get("comparability"), dict):  # an evaluation says what its numbers mean first
        lines += [f"**{record.get('line')}**", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _flat(metrics) if not isinstance(v, list)]
    lines += ["", "| output | size |", "|---|---|"]
    lines += [f"| `{o}` | {_human(_size(root / o))} |" for o in stage.outs]
    reports = [root / o / "report.md" for o in stage.outs if (root / o / "report.md").is_file()]
    lines += ["", *(r.read_text(encoding="utf-8") for r in reports)]  # e.g. the evaluation report itself
    return "\n".join(lines) + "\n"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table, for the report.md files stages write next to their outputs."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
