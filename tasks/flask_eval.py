"""Stage `flask`: FLASK fine-grained evaluation of the generated answers, skill by skill.

Rows without skills, domains or difficulty are first labelled by the judge (3 of the 12 skills, shown in a
per-instance shuffled order; 1-2 of the 10 domains; 1 of the 5 difficulty levels) through structured output; only
the labels a row lacks are taken. Then the judge scores each answer on the instance's skills (1-5) by their rubrics,
against the reference answer, for the main set and for FLASK-HARD (its own file, with its instance rubrics, when
`eval.flask.hard` is set; else the main set's expert-level instances, and `hard_source` says so). Means per skill, per
domain and per skill x difficulty; per skill, how often it was scored, N/A, unparseable or out of range.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tunefold.errors import InputError
from tunefold.eval.flask import (
    HARD,
    SKILLS,
    TEMPLATE_HASH,
    Annotation,
    Instance,
    aggregate,
    annotation_messages,
    judge_messages,
    label_counts,
    load_sets,
    parse_skill_scores,
    scores_schema,
    with_annotation,
)
from tunefold.eval.protocol import JudgeSettings, answer_max_tokens, comparability, judge_settings
from tunefold.io import read_appended, write_jsonl
from tunefold.llm import ChatRequest, ChatResult, Gateway, Parsed
from tunefold.pipeline.stage import StageContext, log, stage_main


def annotate(gw: Gateway, instances: list[Instance], seed: int) -> tuple[list[Instance], int]:
    """Label the instances that lack metadata; return them all (labelled) and how many labels failed."""
    todo = [i for i in instances if not i.annotated]
    if not todo:
        return instances, 0
    reqs = []
    for inst in todo:
        order = list(SKILLS)
        random.Random(seed + inst.idx).shuffle(order)
        reqs.append(ChatRequest(messages=annotation_messages(inst.instruction, order), temperature=0.0))
    results = gw.batch_json("judge", reqs, Annotation, desc="FLASK annotation")
    labelled = {}
    failures = 0
    for inst, (parsed, _) in zip(todo, results, strict=True):
        if parsed.ok and parsed.value is not None:
            labelled[inst.idx] = with_annotation(inst, parsed.value)
        else:
            failures += 1
            log.warning("FLASK instance %d: annotation failed: %s", inst.idx, parsed.failure)
    return [labelled.get(i.idx, i) for i in instances], failures


def _ask(gw: Gateway, inst: Instance, answer: str, judge: JudgeSettings) -> tuple[Parsed[Any], ChatResult]:
    """{scores, problems} from the trailing dictionary or structured JSON, or the kind of failure; one greedy call."""
    json_output = judge.output == "json"
    messages = judge_messages(inst, answer, json_output)
    req = ChatRequest(messages=messages, temperature=0.0, max_tokens=judge.max_tokens, template_hash=TEMPLATE_HASH)
    if not json_output:
        parsed, result = gw.chat_parsed("judge", req, lambda t: parse_skill_scores(t, inst.skills), "flask_scores")
        return (replace(parsed, value=asdict(parsed.value)) if parsed.ok else parsed), result
    parsed, result = gw.chat_json("judge", req, scores_schema(inst.skills), attempts=1)
    if not parsed.ok or parsed.value is None:
        return parsed, result
    raw = parsed.value.scores.model_dump(by_alias=True)
    return replace(parsed, value={"scores": {k: float(v) for k, v in raw.items()}, "problems": {}}), result


def judge(
    gw: Gateway, model_id: str, instances: list[Instance], answers: dict[int, str], settings: JudgeSettings
) -> list[dict[str, Any]]:
    def one(inst: Instance) -> dict[str, Any]:
        parsed, result = _ask(gw, inst, answers[inst.key], settings)
        judged = parsed.value if parsed.ok else None
        return {
            "idx": inst.key,
            "model": model_id,
            "skills": inst.skills,
            "domains": inst.domains,
            "difficulty": inst.difficulty,
            "scores": judged["scores"] if judged else None,
            "problems": judged["problems"] if judged else {},
            "judgment": result.text or result.error or "",
            "judge_status": "ok" if parsed.ok else parsed.kind or "unparseable",
            "failure": parsed.failure,
            "finish_reason": result.finish_reason,
            "tstamp": time.time(),
            "provenance": result.provenance,
        }

    return gw.map("judge", one, instances, desc=f"FLASK {model_id}")


def _answers(path: Path) -> dict[int, str]:
    if not path.exists():
        raise InputError(f"{path} does not exist; run the generate stage first")
    return {int(row["idx"]): row["answer"] for row in read_appended(path)}


def run_flask(ctx: StageContext, answers_dir: Path, out_dir: Path) -> dict[str, Any]:
    cfg = ctx.params.eval
    gw = ctx.gateway
    settings = judge_settings(cfg, ctx.params.llm, "flask", gw.model_name("judge"))
    sets = load_sets(cfg.flask)
    main, hard = sets.main, sets.hard or []
    annotation_failures = 0
    if cfg.flask.annotate:
        main, failed_main = annotate(gw, main, cfg.seed)
        hard, failed_hard = annotate(gw, hard, cfg.seed)
        annotation_failures = failed_main + failed_hard
    usable, usable_hard = [i for i in main if i.skills], [i for i in hard if i.skills]
    if not usable:
        raise InputError(f"{cfg.flask.data}: no instance has skills (annotation failed or eval.flask.annotate off)")
    if sets.hard is None:
        log.warning("FLASK-HARD: no eval.flask.hard; the expert-level instances of %s stand in", cfg.flask.data)
        hard = [i for i in main if i.difficulty == HARD]
    metrics: dict[str, Any] = {
        "instances": len(main),
        "annotation_failures": annotation_failures,
        "unlabelled_skipped": len(main) - len(usable) + len(sets.hard or []) - len(usable_hard),
        "set": label_counts(main),
        "hard_source": "file" if sets.hard is not None else "expert_level",
        "hard_set": label_counts(hard),
        "settings": {
            "protocol": settings.protocol,
            "judge_output": settings.output,
            "judge_max_tokens": settings.max_tokens,
            "answer_max_tokens": answer_max_tokens(cfg),
        },
        "comparability": comparability(
            "flask",
            cfg,
            settings,
            {"questions": Path(cfg.flask.data), "hard": Path(cfg.flask.hard) if cfg.flask.hard else None},
            len(usable),
        ),
    }
    rows: list[dict[str, Any]] = []
    hard_rows: list[dict[str, Any]] = []
    for who in (cfg.candidate, cfg.baseline):
        answers = _answers(answers_dir / f"{who.model_id}.jsonl")
        missing = [i.key for i in usable + usable_hard if i.key not in answers]
        if missing:
            raise InputError(f"no FLASK answers of {who.model_id} for instances {missing[:10]}; run generate first")
        judged = judge(gw, who.model_id, usable, answers, settings)
        if sets.hard is None:
            judged_hard = [r for r in judged if r["difficulty"] == HARD]
        else:
            judged_hard = judge(gw, who.model_id, usable_hard, answers, settings)
            hard_rows += judged_hard
        rows += judged
        hard_agg = aggregate(judged_hard)
        metrics[who.model_id] = aggregate(judged) | {"hard_skill": hard_agg["skill"], "hard": hard_agg}
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", gw.model_name("judge"))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / f"{name}.jsonl", rows)
    write_jsonl(out_dir / "instances.jsonl", [asdict(i) for i in main])
    if sets.hard is not None:  # in a folder of its own: readers of the main set's judgments see only those
        write_jsonl(out_dir / "hard" / f"{name}.jsonl", hard_rows)
        write_jsonl(out_dir / "hard" / "instances.jsonl", [asdict(i) for i in hard])
    m = metrics[cfg.candidate.model_id]
    log.info(
        "FLASK %s: %d skills scored, %d judge calls without a clean score (%s); FLASK-HARD: %s; %s",
        cfg.candidate.model_id,
        len(m["skill"]),
        m["failures"],
        m["failure_kinds"] or "none",
        metrics["hard_source"],
        metrics["comparability"]["line"],
    )
    return metrics | {"judge": name}


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--answers", type=Path, required=True, help="FLASK answers directory from `generate`")
    p.add_argument("--out", type=Path, required=True, help="directory for the judgments")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_flask(ctx, args.answers, args.out)


def main(argv: list[str] | None = None) -> int:
    return stage_main("flask", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
