"""Stage `curriculum_round@<round>`: the data of one SFT round of TAPIR's curriculum.

A round that starts from the base model takes its planned slice (`plan_curriculum` measured its difficulty with that
student). A round that starts from an earlier round's adapter, with `curriculum.plan.adaptive`, re-measures what
the student has become: base + that adapter answers every planned instruction (in this process, on the eval
device and backend, with `llm.student`'s sampling), the judge rates each answer with the prompt `difficulty` used,
and MFD = the target answer's score (kept from `difficulty`/`refine`) - the new score. The round then takes as many
records as its planned slice (the same budget as the static plan): instructions the student now fits are left
out, `hard_share` of the round comes from the hard ones, hardest first. When the student now fits so many that the
round would be short, TAPIR's expansion fills it (with `curriculum.plan.expand`): the teacher writes new
instructions of the hardest instructions' task types, shown those, and answers them; this student answers, the
judge rates both, and a new instruction is kept when its MFD is above `min_mfd`.

Outputs: --out (the round's records, the data of `train.rounds.<round>`), --details dir (candidates.jsonl: every
planned instruction with its planned and re-measured MFD and whether it was picked, and why not, then the new
instructions; expansion_log.jsonl: every attempt with its decision; report.md).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tunefold.config import Params
from tunefold.curriculum.expansion import Expansion
from tunefold.curriculum.planning import mfd_of, pick_round, task_of
from tunefold.curriculum.rating import rate_answer
from tunefold.curriculum.roles import noise_caveat
from tunefold.data.decontam import decontaminate
from tunefold.data.records import Record, read_records
from tunefold.errors import InputError
from tunefold.io import write_jsonl, write_text
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.pipeline.summary import md_table

CHUNK = 64  # prompts per generation call: a progress line each, and a bounded batch for the transformers backend


def student_answers(params: Params, base_dir: Path, adapter: str, records: list[Record]) -> list[str]:
    """base + `adapter` answers each record's prompt with the student's sampling settings, on the backend `generate`
    would use. The model is held only while answering: nothing of it is referenced once the judge is asked."""
    student = params.llm.student
    cfg = params.eval.model_copy(
        update={"protocol": "quick", "max_new_tokens": student.max_tokens, "seed": student.seed or 0}
    )
    if cfg.backend == "vllm":
        from tunefold.eval.vllm_engine import VllmEngine

        answer = VllmEngine(base_dir, cfg, [adapter]).answerer(adapter)
    else:
        from tunefold.eval.generation import hf_answerer

        answer = hf_answerer(cfg, base_dir, adapter)
    convs = [[{"role": m.role, "content": m.content} for m in r.prompt] for r in records]
    answers: list[str] = []
    for start in range(0, len(convs), CHUNK):
        part = convs[start : start + CHUNK]
        answers += [text for text, _, _ in answer(part, [student.temperature] * len(part))]
        log.info("student answers: %d/%d", len(answers), len(convs))
    return answers


def remeasure(ctx: StageContext, records: list[Record], answers: list[str]) -> list[tuple[Record, str | None]]:
    """Each record with the current student's answer, its rating and the new MFD (or None and why it could not be
    measured)."""
    json_output = ctx.params.eval.judge_output == "json"

    def rate(item: tuple[Record, str]) -> tuple[Record, str | None]:
        r, text = item
        teacher = r.metadata.get("teacher_score")
        if teacher is None:
            return r, "no target-answer score from `difficulty`"
        score, why = rate_answer(ctx.gateway, r.instruction, text, json_output)
        if score is None:
            return r, why
        now = {"student_response": text, "student_score": score, "mfd": float(teacher) - score}
        return r.model_copy(update={"metadata": r.metadata | now | {"mfd_planned": r.metadata.get("mfd")}}), None

    return ctx.gateway.map("judge", rate, list(zip(records, answers, strict=True)), desc="MFD (re-measured)")


def round_expansion(ctx: StageContext, base_dir: Path, adapter: str) -> Expansion:
    """Expansion measured with the round's student: the judge rates the teacher's answer, base + `adapter`
    answers, the judge rates that (`remeasure`)."""
    gw, json_output = ctx.gateway, ctx.params.eval.judge_output == "json"

    def rate_target(r: Record) -> Record | None:
        score, _ = rate_answer(gw, r.instruction, r.response, json_output)
        return None if score is None else r.model_copy(update={"metadata": r.metadata | {"teacher_score": score}})

    def measure(records: list[Record]) -> list[tuple[Record | None, str | None]]:
        rated = gw.map("judge", rate_target, records, desc="rate new targets")
        ready = [r for r in rated if r is not None]
        answers = student_answers(ctx.params, base_dir, adapter, ready) if ready else []
        measured = dict(zip(map(id, ready), remeasure(ctx, ready, answers), strict=True))
        out: list[tuple[Record | None, str | None]] = []
        for r in rated:
            if r is None:
                out.append((None, "the judge gave the teacher's answer no usable rating"))
                continue
            scored, why = measured[id(r)]
            out.append((None, why) if why else (scored, None))
        return out

    return Expansion(gw, measure, ctx.params.curriculum.difficulty.min_mfd, origin="tapir_round_expansion")


def expand_round(expansion: Expansion, measured: list[Record], chosen: list[Record], shortfall: int) -> list[Record]:
    """Up to `shortfall` new instructions, modelled on the hardest of this round (or, if it has none, the hardest
    measured): the k-th new one follows the task type of the (k mod n)-th hardest."""
    seeds = sorted(chosen or measured, key=lambda r: (-mfd_of(r), r.id))
    if not seeds:
        return []
    wanted = Counter(task_of(seeds[k % len(seeds)]) for k in range(shortfall))
    new: list[Record] = []
    for task, n in sorted(wanted.items()):
        ranked = sorted((r for r in measured if task_of(r) == task), key=lambda r: (-mfd_of(r), r.id))
        new += expansion(task, ranked, n)[:n]
    return new


def run_round(ctx: StageContext, name: str, planned_path: Path, base_dir: Path, out: Path, details: Path) -> dict:
    p = ctx.params
    rounds = [f"r{k}" for k in range(1, len(p.curriculum.plan.hard_share) + 1)]
    setting = p.train.rounds[name] if p.train and name in p.train.rounds else None
    if setting is None or Path(setting.data).resolve() != out.resolve():
        write_jsonl(out, [])
        write_jsonl(details / "candidates.jsonl", [])
        trains_on = setting.data if setting else "nothing (not in train.rounds)"
        write_text(details / "report.md", f"### Curriculum round {name}\n\nThe round trains on {trains_on}.\n")
        return {"round": name, "mode": "not a curriculum round", "records": 0}
    planned = read_records(planned_path)
    mine = [r for r in planned if r.metadata.get("planned_round") == name]
    init = setting.init
    from_base = Path(init).resolve() == base_dir.resolve()
    rows: list[dict[str, Any]] = []
    new: list[Record] = []
    if from_base or not p.curriculum.plan.adaptive:
        chosen, mode = mine, "planned slice (" + ("the base model is the student" if from_base else "static") + ")"
        rows = [{"id": r.id, "mfd_planned": mfd_of(r), "picked": True} for r in mine]
    else:
        distinct = list({r.id: r for r in planned}.values())
        log.info("%s: re-measuring %d planned instructions with the student %s", name, len(distinct), init)
        measured = remeasure(ctx, distinct, student_answers(p, base_dir, init, distinct))
        unmeasured = [(r, why) for r, why in measured if why is not None]
        chosen, left_out = pick_round(
            [r for r, why in measured if why is None],
            len(mine),
            p.curriculum.plan.hard_share[rounds.index(name)],
            p.curriculum.plan.hard_quantile,
            p.curriculum.difficulty.min_mfd,
        )
        if len(chosen) < len(mine) and p.curriculum.plan.expand:
            expansion = round_expansion(ctx, base_dir, init)
            ok = [r for r, why in measured if why is None]
            new = expand_round(expansion, ok, chosen, len(mine) - len(chosen))
            write_jsonl(details / "expansion_log.jsonl", expansion.log)
            log.info("%s: %d new instruction(s) written for the %d missing", name, len(new), len(mine) - len(chosen))
            chosen = chosen + new
        if not chosen:
            raise InputError(
                f"round {name}: the student {init} fits every planned instruction (or none could be rated); "
                "nothing is left to train on: lower curriculum.difficulty.min_mfd or set curriculum.plan.adaptive "
                "false"
            )
        mode = f"re-measured with {init}"
        written = {r.id for r in new}
        for r in chosen:
            rows.append({"id": r.id, "mfd_planned": r.metadata["mfd_planned"], "mfd": mfd_of(r), "picked": True})
            if r.id in written:
                rows[-1]["origin"] = "new instruction from the teacher"
        for r, why in left_out:
            rows.append(
                {"id": r.id, "mfd_planned": r.metadata["mfd_planned"], "mfd": mfd_of(r), "picked": False, "why": why}
            )
        rows += [{"id": r.id, "mfd_planned": mfd_of(r), "picked": False, "why": why} for r, why in unmeasured]
    chosen, contaminated = decontaminate(chosen, p.holdout, p.eval)
    for bad in contaminated:
        log.warning("%s: %s: %s: left out of the round", name, bad["where"], bad["reason"])
        row = next(row for row in rows if row["id"] == bad["record"]["id"] and row["picked"])
        row |= {"picked": False, "why": bad["reason"]}
    if not chosen:
        raise InputError(
            f"round {name}: every record contains an evaluation question (see the log); nothing to train on"
        )
    write_jsonl(out, [r.model_dump() for r in chosen])
    write_jsonl(details / "candidates.jsonl", rows)
    write_jsonl(details / "contaminated.jsonl", contaminated)
    again = sum(r.metadata.get("planned_round") not in (None, name) for r in chosen)
    metrics = {
        "round": name,
        "mode": mode,
        "planned_slice": len(mine),
        "records": len(chosen),
        "from_other_slices": again,
        "new_instructions": len(new),
        "contaminated": len(contaminated),
        "mean_mfd": round(sum(map(mfd_of, chosen)) / len(chosen), 3) if chosen else None,
        "mean_mfd_planned": round(sum(map(mfd_of, mine)) / len(mine), 3) if mine else None,
        "left_out": dict(Counter(row["why"].split(":")[0] for row in rows if not row["picked"])),
    }
    write_text(
        details / "report.md",
        f"### Curriculum round {name} (TAPIR)\n\n{noise_caveat(p.llm)}{len(chosen)} record(s), {mode}; "
        f"{again} of them were planned for another round, {len(new)} are new instructions the teacher wrote.\n\n"
        + md_table(["id", "planned MFD", "MFD now", "picked", "why not"], [_row(r) for r in rows])
        + "\n",
    )
    log.info("%s: %d records (%s), mean MFD %s", name, len(chosen), mode, metrics["mean_mfd"])
    return metrics


def _row(row: dict[str, Any]) -> list[Any]:
    planned = "new" if row.get("origin") else row["mfd_planned"]
    return [row["id"], planned, row.get("mfd", ""), row["picked"], row.get("why", "")]


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--round", required=True, help="the round's name (a key of train.rounds, r1, r2, ...)")
    p.add_argument("--planned", type=Path, required=True, help="plan_curriculum's planned.jsonl")
    p.add_argument("--base", type=Path, required=True, help="the base model directory")
    p.add_argument("--out", type=Path, required=True, help="the round's records JSONL")
    p.add_argument("--details", type=Path, required=True, help="directory for the decision files and report.md")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_round(ctx, args.round, args.planned, args.base, args.out, args.details)


def main(argv: list[str] | None = None) -> int:
    return stage_main("curriculum_round", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
