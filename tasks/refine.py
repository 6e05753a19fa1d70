"""Stage `refine`: TAPIR's response refinement. The teacher rewrites each kept answer with a task-specific
instruction (step by step for math and reasoning, commented code for coding, exact items for extraction, ...).

Each rewrite is rated by the judge with the same single-answer prompt that rated the original in `difficulty`,
and replaces it only when rated at least as high; the record's teacher score and MFD are then the rewrite's, so the
answer trained on (and the DPO "chosen" side) is the one whose MFD was measured. A rewrite that fails, comes back
empty, cannot be rated or is rated lower keeps the original answer, and each is counted. With
`curriculum.refine: false` the records pass through unchanged. Outputs (in --out): records.jsonl, report.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tunefold.curriculum.prompts import refine_messages
from tunefold.curriculum.rating import rate_answer
from tunefold.curriculum.roles import noise_caveat
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
        ChatRequest(
            messages=refine_messages(str(r.metadata.get("task_type", "other")), instruction_text(r), r.response)
        )
        for r in records
    ]
    results = ctx.gateway.batch("teacher", reqs, desc="refine responses")
    rewrites = [(res.text or "").strip() if res.ok else "" for res in results]
    json_output = ctx.params.eval.judge_output == "json"

    def rate(item: tuple[Record, str]) -> tuple[float | None, str | None]:
        r, text = item
        return rate_answer(ctx.gateway, r.instruction, text, json_output) if text else (None, "no rewrite")

    ratings = ctx.gateway.map("judge", rate, list(zip(records, rewrites, strict=True)), desc="rate the rewrites")
    out, by_task, outcome = [], Counter(), Counter()
    for r, text, (score, _why) in zip(records, rewrites, ratings, strict=True):
        before = r.metadata.get("teacher_score")
        if not text:
            kind = "failed"
        elif score is None:
            kind = "unrated"
        elif before is not None and score < before:
            kind = "rated_lower"
        else:
            kind = "refined"
        outcome[kind] += 1
        if kind != "refined":
            out.append(r.model_copy(update={"metadata": r.metadata | {"refined": False, "refine_outcome": kind}}))
            continue
        by_task[str(r.metadata.get("task_type", "other"))] += 1
        scores = {"teacher_score": score, "unrefined_score": before}
        if before is not None and "student_score" in r.metadata:
            scores["mfd"] = score - float(r.metadata["student_score"])
        out.append(with_response(r, text, refined=True, refine_outcome=kind, unrefined=r.response, **scores))
    if outcome["failed"] or outcome["unrated"] or outcome["rated_lower"]:
        log.warning(
            "%d of %d answers keep their original: %d rewrites failed, %d could not be rated, %d were rated lower",
            len(records) - outcome["refined"],
            len(records),
            outcome["failed"],
            outcome["unrated"],
            outcome["rated_lower"],
        )
    return out, {
        "records": len(out),
        "refined": outcome["refined"],
        "failed": outcome["failed"],
        "unrated": outcome["unrated"],
        "rated_lower": outcome["rated_lower"],
        "enabled": True,
        "refined_by_task": dict(sorted(by_task.items())),
    }


def run_refine(ctx: StageContext, records_path: Path, out_dir: Path) -> dict[str, Any]:
    records, metrics = refine(ctx, read_records(records_path, allow_empty=True))
    write_jsonl(out_dir / "records.jsonl", [r.model_dump() for r in records])
    rows = [[t, n] for t, n in metrics.get("refined_by_task", {}).items()]
    kept = metrics["records"] - metrics["refined"]
    write_text(
        out_dir / "report.md",
        "### Response refinement (TAPIR)\n\n"
        + noise_caveat(ctx.params.llm)
        + f"Refined {metrics['refined']} of {metrics['records']} answers; "
        f"{kept} keep the original ({metrics['failed']} rewrites failed, {metrics.get('unrated', 0)} could not be "
        f"rated, {metrics.get('rated_lower', 0)} were rated below the original).\n\n"
        + md_table(["task type", "refined"], rows)
        + "\n",
    )
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
