"""Stage `refine`: TAPIR's response refinement. The teacher rewrites each kept answer with a task-specific
instruction (step by step for math and reasoning, commented code for coding, exact items for extraction, ...).

A rewrite that fails or comes back empty keeps the original answer and is counted. With `curriculum.refine: false`
the records pass through unchanged. Outputs (in --out): records.jsonl, report.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tunefold.curriculum.prompts import refine_messages
from tunefold.curriculum.taxonomy import instruction_text
from tunefold.data.records import Record, read_records, with_response
from tunefold.io import write_jsonl, write_text
from tunefold.llm import ChatRequest
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.pipeline.summary import md_table


def refine(ctx: StageContext, records: list[Record]) -> tuple[list[Record], dict[str, Any]]:
    if not ctx.params.curriculum.refine:
        return records, {"records": len(records), "refined": 0, "failed": 0, "enabled": False}
    reqs = [
        ChatRequest(messages=refine_messages(str(r.metadata.get("task_type", "other")), instruction_text(r),
                                             r.response))
        for r in records
    ]  # fmt: skip
    results = ctx.gateway.batch("teacher", reqs, desc="refine responses")
    out, by_task, failed = [], Counter(), 0
    for r, res in zip(records, results, strict=True):
        text = (res.text or "").strip()
        if not res.ok or not text:
            failed += 1
            out.append(r.model_copy(update={"metadata": r.metadata | {"refined": False}}))
            continue
        by_task[str(r.metadata.get("task_type", "other"))] += 1
        out.append(with_response(r, text, refined=True, unrefined=r.response))
    if failed:
        log.warning("%d of %d rewrites failed; those keep their original answer", failed, len(records))
    return out, {"records": len(out), "refined": len(out) - failed, "failed": failed, "enabled": True,
                 "refined_by_task": dict(sorted(by_task.items()))}  # fmt: skip


def run_refine(ctx: StageContext, records_path: Path, out_dir: Path) -> dict[str, Any]:
    records, metrics = refine(ctx, read_records(records_path, allow_empty=True))
    write_jsonl(out_dir / "records.jsonl", [r.model_dump() for r in records])
    rows = [[t, n] for t, n in metrics.get("refined_by_task", {}).items()]
    write_text(out_dir / "report.md", f"### Response refinement (TAPIR)\n\nRefined {metrics['refined']} of "
               f"{metrics['records']} answers; {metrics['failed']} rewrites failed (original kept).\n\n"
               + md_table(["task type", "refined"], rows) + "\n")  # fmt: skip
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=Path, required=True, help="kept records from `difficulty`")
    p.add_argument("--out", type=Path, required=True, help="output directory")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_refine(ctx, args.records, args.out)


def main(argv: list[str] | None = None) -> int:
    return stage_main("refine", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
