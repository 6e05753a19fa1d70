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
from tunefold.curriculum.planning import distribution, mfd_of, rebalance, round_stats, split_rounds
from tunefold.curriculum.prompts import EXPAND_INSTRUCTION, InstructionReply, expansion_text
from tunefold.curriculum.rating import score_record
from tunefold.curriculum.roles import noise_caveat
from tunefold.curriculum.taxonomy import TASK_DESCRIPTIONS, instruction_key, instruction_text
from tunefold.data.records import Message, Record, make_record, read_records
from tunefold.errors import InputError
from tunefold.io import write_json, write_jsonl, write_text
from tunefold.llm import ChatRequest
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


class Expander:
    """TAPIR's expansion of a scarce task type: the teacher writes new instructions of that type, shown its hardest
    ones, and answers them; the student answers and the judge rates both, as `difficulty` does. A new instruction
    is kept when its MFD is above `min_mfd` and it repeats no instruction of the type; every attempt is logged."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.log: list[dict[str, Any]] = []

    def __call__(self, task: str, ranked: list[Record], extra: int) -> list[Record]:
        gw, json_output = self.ctx.gateway, self.ctx.params.eval.judge_output == "json"
        min_mfd = self.ctx.params.curriculum.difficulty.min_mfd
        examples = [instruction_text(r, limit=600) for r in ranked[:3]]
        seen = {instruction_key(r) for r in ranked}

        def write(k: int) -> tuple[Record | None, dict[str, Any]]:
            row: dict[str, Any] = {"task_type": task, "attempt": k}
            shown = expansion_text(task, TASK_DESCRIPTIONS.get(task, task), examples, k, extra)
            req = ChatRequest(
                messages=[{"role": "system", "content": EXPAND_INSTRUCTION}, {"role": "user", "content": shown}]
            )
            parsed, _ = gw.chat_json("teacher", req, InstructionReply, attempts=2)
            if not parsed.ok:
                return None, row | {"decision": "dropped", "reason": "the teacher wrote no usable instruction"}
            instruction = parsed.value.instruction.strip()
            row["instruction"] = instruction
            answer = gw.answer("teacher", [{"role": "user", "content": instruction}])
            if answer is None:
                return None, row | {"decision": "dropped", "reason": "no answer from the teacher"}
            messages = [Message(role="user", content=instruction), Message(role="assistant", content=answer)]
            meta = {"task_type": task, "origin": "tapir_expansion", "source_name": "curriculum"}
            scored, why = score_record(
                gw, make_record(messages, f"expand:{task}:{k}", metadata=meta), True, json_output
            )
            if scored is None:
                return None, row | {"decision": "dropped", "reason": why}
            mfd = mfd_of(scored)
            row["mfd"] = mfd
            if mfd <= min_mfd:
                return None, row | {"decision": "dropped", "reason": f"MFD {mfd:g} <= min_mfd {min_mfd:g}"}
            return scored.model_copy(update={"metadata": scored.metadata | {"target": "teacher"}}), row

        kept = []
        for record, row in gw.map("teacher", write, list(range(extra)), desc=f"expand {task}"):
            if record is not None:
                key = instruction_key(record)
                if key in seen:
                    row |= {"decision": "dropped", "reason": "repeats an instruction of the type"}
                else:
                    seen.add(key)
                    kept.append(record)
                    row["decision"] = "kept"
            self.log.append(row)
        return kept


def plan(
    cfg: CurriculumConfig, records: list[Record], expand: Expander | None = None
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
    expander = Expander(ctx)
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
