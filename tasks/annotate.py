"""Stage `annotate`: the teacher tags every clean record with a task type from the fixed taxonomy and CodecLM's
metadata (one use case, up to 3 skills), through structured output.

Outputs (in --out): records.jsonl (every input record, tags in `metadata`), report.md. A tag that cannot be
parsed becomes `other`, with the failure kept in the record and counted; no record is dropped here.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tunefold.curriculum.roles import noise_caveat
from tunefold.curriculum.taxonomy import instruction_text, tag_instructions, with_tag
from tunefold.data.records import Record, read_records
from tunefold.io import write_json, write_jsonl, write_text
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.pipeline.summary import md_table


def annotate(ctx: StageContext, records: list[Record]) -> tuple[list[Record], dict[str, Any]]:
    tags = tag_instructions(ctx.gateway, [instruction_text(r) for r in records], desc="task tags")
    tagged = [with_tag(r, t) for r, t in zip(records, tags, strict=True)]
    failures = sum(t.failure is not None for t in tags)
    if failures:
        log.warning("%d of %d tags could not be parsed; those records are tagged `other`", failures, len(records))
    counts = Counter(str(r.metadata["task_type"]) for r in tagged)
    return tagged, {"records": len(tagged), "tag_failures": failures, "task_types": dict(sorted(counts.items()))}


def run_annotate(ctx: StageContext, records_path: Path, out_dir: Path, plot: Path | None) -> dict[str, Any]:
    tagged, metrics = annotate(ctx, read_records(records_path))
    write_jsonl(out_dir / "records.jsonl", [r.model_dump() for r in tagged])
    rows = [[t, n, f"{n / len(tagged):.1%}"] for t, n in metrics["task_types"].items()]
    write_text(
        out_dir / "report.md",
        "### Task types\n\n"
        + noise_caveat(ctx.params.llm)
        + md_table(["task type", "records", "share"], rows)
        + f"\n\nUnparseable tags (tagged `other`): {metrics['tag_failures']}\n",
    )
    if plot:
        write_json(plot, [{"task_type": t, "records": n} for t, n in metrics["task_types"].items()])
    log.info("annotated %d records: %s", len(tagged), metrics["task_types"])
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=Path, required=True, help="clean records JSONL (from validate)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--plot", type=Path, help="task-type counts for `dvc plots`")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_annotate(ctx, args.records, args.out, args.plot)


def main(argv: list[str] | None = None) -> int:
    return stage_main("annotate", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
