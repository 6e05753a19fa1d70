"""Stage `plan_curriculum`: TAPIR's multi-round curriculum from the scored, refined instructions.

Re-balances the kept set to `curriculum.plan.target` (hardest first within a task; a scarce task type gets new
instructions the teacher writes of that type, scored like `difficulty`, and repeats only for what is still missing),
then splits it into one round per entry of `hard_share`, each with that share of hard instructions (MFD above the
`hard_quantile` quantile), easiest material first. Writes the planned set with each record's round
(`planned.jsonl`, which `curriculum_round@r<k>` takes as is or re-measures with the round's student) and preference
pairs for DPO: the target answer chosen, the student's answer rejected (with the score gap), plus the preference
pairs from the input data. An empty round is an error, never passed on to training.

Outputs: --out dir (planned.jsonl, preferences.jsonl, dropped.jsonl, expansion_log.jsonl, plan.json, report.md).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tunefold.config import CurriculumConfig
from tunefold.curriculum.expansion import Expansion
from tunefold.curriculum.planning import distribution, mfd_of, rebalance, round_stats, split_rounds
from tunefold.curriculum.rating import score_record
from tunefold.curriculum.roles import noise_caveat
from tunefold.data.records import Record, make_record, read_records
from tunefold.errors import InputError
from tunefold.io import write_json, write_jsonl, write_text
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.pipeline.summary import md_table


def preference_pairs(records: list[Record]) -> list[Record]:
    """Target answer = chosen, the student's answer = rejected; one pair per distinct instruction."""
    pairs: dict[str, Record] = {}
    for r in records:
        student = r.metadata.get("student_response")
        if not student or student == r.response or r.metadata.get("kept_response") == "student":
            continue
        meta = {
            "source_name": "curriculum",
            "task_type": r.metadata.get("task_type"),
            "mfd": mfd_of(r),
            "parent_id": r.metadata.get("parent_id", r.id),
        }
        pair = make_record(list(r.messages), f"curriculum:{r.id}", rejected=student, metadata=meta)
        pairs.setdefault(pair.id, pair)
    return list(pairs.values())


def base_student_expansion(ctx: StageContext) -> Expansion:
    """Expansion measured as `difficulty` measures: the teacher's answer is the target, the student endpoint
    answers, the judge rates both."""
    gw, json_output = ctx.gateway, ctx.params.eval.judge_output == "json"

    def measure(records: list[Record]) -> list[tuple[Record | None, str | None]]:
        return gw.map("judge", lambda r: score_record(gw, r, True, json_output), records, desc="MFD (new)")

    return Expansion(gw, measure, ctx.params.curriculum.difficulty.min_mfd)


def plan(
    cfg: CurriculumConfig, records: list[Record], expand: Expansion | None = None
) -> tuple[list[list[Record]], dict[str, Any], list[Any]]:
    p = cfg.plan
    balanced = rebalance(records, p.target, p.size, cfg.seed, expand if p.expand else None)
    for w in balanced.warnings:
        log.warning(w)
    rounds = split_rounds(balanced.records, p.hard_share, p.hard_quantile)
    empty = [f"r{i}" for i, rs in enumerate(rounds, 1) if not rs]
    if empty:
        raise InputError(f"curriculum rounds {', '.join(empty)} would be empty; lower the number of rounds")
    ranked = sorted(mfd_of(r) for r in balanced.records)
    threshold = ranked[min(len(ranked) - 1, int(p.hard_quantile * len(ranked)))]
    report = {
        "kept_in": len(records),
        "planned": len(balanced.records),
        "expanded": balanced.expanded,
        "repeated": balanced.repeated,
        "dropped": len(balanced.dropped),
        "hard_mfd_threshold": threshold,
        "tasks_before": distribution(records),
        "tasks_after": distribution(balanced.records),
        "target_used": {t: round(s, 4) for t, s in balanced.target.items()},
        "rounds": round_stats(rounds, threshold),
        "warnings": balanced.warnings,
    }
    return rounds, report, balanced.dropped


def run_plan(
    ctx: StageContext, records_path: Path, pairs_path: Path, out_dir: Path, plots: Path | None
) -> dict[str, Any]:
    cfg = ctx.params.curriculum
    records = read_records(records_path, allow_empty=True)
    expander = base_student_expansion(ctx)
    rounds, report, dropped = plan(cfg, records, expander)
    report["expansion_outcomes"] = dict(Counter(row["decision"] for row in expander.log))
    write_jsonl(out_dir / "expansion_log.jsonl", expander.log)
    planned = [
        r.model_copy(update={"metadata": r.metadata | {"planned_round": f"r{i}"}}).model_dump()
        for i, rs in enumerate(rounds, 1)
        for r in rs
    ]
    write_jsonl(out_dir / "planned.jsonl", planned)
    given = read_records(pairs_path, allow_empty=True)
    prefs = preference_pairs([r for rs in rounds for r in rs]) + given
    write_jsonl(out_dir / "preferences.jsonl", [r.model_dump() for r in prefs])
    write_jsonl(out_dir / "dropped.jsonl", [{"record": r.model_dump(), "reason": why} for r, why in dropped])
    write_json(out_dir / "plan.json", report)
    rounds_info = report["rounds"]
    tasks = sorted(set(report["tasks_before"]) | set(report["target_used"]))
    task_rows = [
        {
            "task_type": t,
            "before": report["tasks_before"].get(t, 0.0),
            "after": report["tasks_after"].get(t, 0.0),
            "target": report["target_used"].get(t, 0.0),
        }
        for t in tasks
    ]
    write_text(
        out_dir / "report.md",
        "### Curriculum plan (TAPIR)\n\n"
        + noise_caveat(ctx.params.llm)
        + f"{report['planned']} instructions planned from {report['kept_in']} kept ({report['expanded']} new "
        f"teacher-written instructions and {report['repeated']} repeats for scarce tasks, {report['dropped']} over "
        f"quota); {len(prefs)} preference pairs "
        f"({len(given)} from the input data).\n\n"
        + md_table(["task type", "before", "after", "target"], [list(r.values()) for r in task_rows])
        + "\n\n"
        + md_table(["round", "records", "mean MFD", "hard share"], [list(r.values()) for r in report["rounds"]])
        + "\n"
        + "".join(f"\n- warning: {w}" for w in report["warnings"]),
    )
    if plots:
        write_json(plots / "plan_tasks.json", task_rows)
        write_json(plots / "plan_rounds.json", report["rounds"])
    log.info("curriculum: %s", ", ".join(f"{r['round']}: {r['records']} (MFD {r['mean_mfd']})" for r in rounds_info))
    return {k: v for k, v in report.items() if k != "warnings"} | {
        "preference_pairs": len(prefs),
        "warnings": len(report["warnings"]),
    }


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=Path, required=True, help="refined records")
    p.add_argument("--pairs", type=Path, required=True, help="preference pairs passed on by `difficulty`")
    p.add_argument("--out", type=Path, required=True, help="directory for preferences, dropped rows and the plan")
    p.add_argument("--plots", type=Path, help="directory for the `dvc plots` data")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_plan(ctx, args.records, args.pairs, args.out, args.plots)


def main(argv: list[str] | None = None) -> int:
    return stage_main("plan_curriculum", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
