"""The pipeline's time, stage by stage, from a finished run's metrics (issue 18's before/after table).

Every stage writes its own wall time as `seconds` in its metrics JSON, so after `dvc repro` or `tunefold run` (cold
LLM cache: point `llm.cache_dir` at an empty folder, or remove `.cache/llm`) this prints one row per stage in the
order of dvc.yaml, the sum, and the five stages that took longest. (`generate` keeps its answers across runs and
resumes them: remove `data/eval/model_answer` and `data/eval/flask_answer` for a cold run.) Compare two runs with
`--before` (a JSON file this script wrote with `--save`).

    python bench/stage_times.py [--repo .] [--save run.json] [--before earlier.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def stage_seconds(repo: Path) -> dict[str, float | None]:
    """Each stage's `seconds` (None when its metrics are missing or have none), in dvc.yaml's order."""
    from tunefold.pipeline.dag import StageGraph

    graph = StageGraph.load(repo / "dvc.yaml")
    out: dict[str, float | None] = {}
    for name, stage in graph.stages.items():
        seconds = None
        for path in stage.metrics:
            try:
                data = json.loads((repo / path).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("seconds"), int | float):
                seconds = float(data["seconds"])
        out[name] = seconds
    return out


def table(now: dict[str, float | None], before: dict[str, float | None] | None) -> str:
    def fmt(x: float | None) -> str:
        return "" if x is None else f"{x:.0f}"

    head = ["stage", "before (s)", "now (s)", "now / before"] if before else ["stage", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in now.items():
        if before:
            b = before.get(name)
            ratio = f"{s / b:.2f}" if s and b else ""
            lines.append(f"| {name} | {fmt(b)} | {fmt(s)} | {ratio} |")
        else:
            lines.append(f"| {name} | {fmt(s)} |")
    total = sum(s or 0 for s in now.values())
    if before:
        was = sum(s or 0 for s in before.values())
        lines.append(
            f"| **sum** | {was:.0f} | {total:.0f} | {total / was:.2f} |" if was else f"| **sum** | | {total:.0f} |"
        )
    else:
        lines.append(f"| **sum** | {total:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=ROOT, help="project folder of the finished run (default: this one)")
    p.add_argument("--save", type=Path, help="write the stage seconds as JSON, for a later --before")
    p.add_argument("--before", type=Path, help="a JSON file an earlier run saved with --save")
    args = p.parse_args(argv)
    now = stage_seconds(args.repo)
    before = json.loads(args.before.read_text()) if args.before else None
    print(table(now, before))
    top = sorted(((s, n) for n, s in now.items() if s), reverse=True)[:5]
    print("\nlongest: " + ", ".join(f"{n} {s / 60:.1f} min" for s, n in top))
    print("(the sum leaves out DVC's and Prefect's own time between stages: compare it with the run's wall time)")
    if args.save:
        args.save.write_text(json.dumps(now, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
