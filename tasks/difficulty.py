"""Stage `difficulty`: TAPIR's Model Fitting Difficulty of every candidate instruction.

For each instruction (annotated user records and synthesized ones) the teacher and the student (`llm.student`)
answer, and the judge rates both answers 1-10 with the project's single-answer prompt. MFD = teacher score -
student score: instructions the student already fits (MFD <= `min_mfd`) are dropped; the rest are kept with their
scores and the student's answer (the rejected side of the preference pairs `plan_curriculum` writes).

Outputs (in --out): records.jsonl (kept), dropped.jsonl (record + reason), pairs.jsonl (preference pairs from the
input, passed through untouched for DPO), report.md. Counts reconcile: inputs = kept + dropped + pairs.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tunefold.config import TASK_TYPES
from tunefold.curriculum.rating import score_record
from tunefold.curriculum.roles import noise_caveat, same_weights, target_responses
from tunefold.data.records import Record, read_records
from tunefold.io import write_json, write_jsonl, write_text
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.pipeline.summary import md_table


def difficulty(ctx: StageContext, inputs: list[Path]) -> tuple[list[Record], list[dict[str, Any]], list[Record]]:
    cfg = ctx.params.curriculum.difficulty
    records = [r for path in inputs for r in read_records(path, allow_empty=True)]
    pairs = [r for r in records if r.rejected is not None]
    todo = [r for r in records if r.rejected is None]
    dropped: list[dict[str, Any]] = []
    if cfg.max_instructions and len(todo) > cfg.max_instructions:
        chosen = set(random.Random(ctx.params.curriculum.seed).sample(range(len(todo)), cfg.max_instructions))
        reason = f"not sampled: curriculum.difficulty.max_instructions={cfg.max_instructions}"
        dropped = [
            {"record": r.model_dump(), "kind": "not sampled", "reason": reason}
            for i, r in enumerate(todo)
            if i not in chosen
        ]
        todo = [r for i, r in enumerate(todo) if i in chosen]
    json_output = ctx.params.eval.judge_output == "json"
    use_dataset = target_responses(cfg.responses, ctx.params.llm) == "dataset"
    scored = ctx.gateway.map(
        "judge",
        lambda r: score_record(ctx.gateway, r, use_dataset, json_output),
        todo,
        desc="MFD (teacher vs student)",
    )
    kept: list[Record] = []
    for r, (done, why) in zip(todo, scored, strict=True):
        if done is None:
            dropped.append({"record": r.model_dump(), "kind": "not scored", "reason": why})
        elif done.metadata["mfd"] > cfg.min_mfd:
            kept.append(done)
        else:
            dropped.append(
                {
                    "record": done.model_dump(),
                    "kind": "fitted",
                    "reason": f"MFD {done.metadata['mfd']:g} <= min_mfd {cfg.min_mfd:g}: the student already fits it",
                }
            )
    return kept, dropped, pairs


def run_difficulty(ctx: StageContext, inputs: list[Path], out_dir: Path, plot: Path | None) -> dict[str, Any]:
    kept, dropped, pairs = difficulty(ctx, inputs)
    write_jsonl(out_dir / "records.jsonl", [r.model_dump() for r in kept])
    write_jsonl(out_dir / "dropped.jsonl", dropped)
    write_jsonl(out_dir / "pairs.jsonl", [r.model_dump() for r in pairs])
    mfds = [r.metadata["mfd"] for r in kept] + [
        d["record"]["metadata"]["mfd"] for d in dropped if "mfd" in d["record"]["metadata"]
    ]
    hist = Counter(round(m) for m in mfds)
    reasons = Counter(d["kind"] for d in dropped)
    scored = len(kept) + len(dropped)
    metrics = {
        "inputs": scored + len(pairs),
        "kept": len(kept),
        "dropped": len(dropped),
        "preference_pairs": len(pairs),
        "kept_fraction": round(len(kept) / scored, 3) if scored else None,
        "mean_mfd_kept": round(sum(r.metadata["mfd"] for r in kept) / len(kept), 3) if kept else None,
        "dropped_by_reason": dict(reasons),
        "min_mfd": ctx.params.curriculum.difficulty.min_mfd,
        "responses": target_responses(ctx.params.curriculum.difficulty.responses, ctx.params.llm),
        "one_model_in_every_role": same_weights(ctx.params.llm),
        "kept_by_task": {t: n for t in TASK_TYPES if (n := sum(r.metadata.get("task_type") == t for r in kept))},
    }
    if not kept:
        log.warning("no instruction has MFD above %g: nothing would be left to train on", metrics["min_mfd"])
    rows = [[k, hist[k]] for k in sorted(hist)]
    why = [[k, n] for k, n in reasons.items()]
    write_text(
        out_dir / "report.md",
        f"### Model Fitting Difficulty (TAPIR)\n\n{noise_caveat(ctx.params.llm)}Kept {len(kept)} of {scored} "
        f"scored instructions (MFD > {metrics['min_mfd']:g}); {len(pairs)} preference pairs passed on.\n\n"
        + md_table(["MFD (teacher - student)", "instructions"], rows)
        + "\n\n"
        + md_table(["dropped because", "instructions"], why)
        + "\n",
    )
    if plot:
        write_json(plot, [{"mfd": k, "instructions": hist[k]} for k in sorted(hist)])
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=Path, nargs="+", required=True, help="records JSONL files to score")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--plot", type=Path, help="MFD histogram for `dvc plots`")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_difficulty(ctx, args.records, args.out, args.plot)


def main(argv: list[str] | None = None) -> int:
    return stage_main("difficulty", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
