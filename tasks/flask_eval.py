"""Stage `flask`: FLASK fine-grained evaluation of the generated answers, skill by skill.

Instances without metadata are first labelled by the judge (3 of the 12 skills, shown in a per-instance shuffled
order; 1-2 of the 10 domains; 1 of the 5 difficulty levels) through structured output. Then the judge scores each
answer on the instance's skills (1-5 or N/A) against the reference answer. Scores are aggregated per skill, per
domain, per skill x difficulty and on FLASK-HARD; N/A, parse failures and annotation failures are counted apart.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

from tunefold.errors import InputError
from tunefold.eval.flask import (
    JSON_INSTRUCTION,
    SKILLS,
    TEMPLATE_HASH,
    Annotation,
    Instance,
    aggregate,
    annotation_messages,
    judge_messages,
    load_instances,
    parse_skill_scores,
    scores_schema,
)
from tunefold.io import read_appended, write_jsonl
from tunefold.llm import ChatRequest, ChatResult, Gateway
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
            a = parsed.value
            labelled[inst.idx] = Instance(inst.idx, inst.instruction, inst.answer, list(a.skills), list(a.domains),
                                          a.difficulty, inst.task)  # fmt: skip
        else:
            failures += 1
            log.warning("FLASK instance %d: annotation failed: %s", inst.idx, parsed.failure)
    return [labelled.get(i.idx, i) for i in instances], failures


def _ask(gw: Gateway, inst: Instance, answer: str, json_output: bool) -> tuple[Any, str | None, ChatResult]:
    """({skill: score or None for N/A}, failure, result) from the trailing dict or from structured JSON."""
    messages = judge_messages(inst, answer)
    if not json_output:
        req = ChatRequest(messages=messages, temperature=0.0, template_hash=TEMPLATE_HASH)
        parsed, result = gw.chat_parsed("judge", req, lambda t: parse_skill_scores(t, inst.skills), "flask_scores")
        return (parsed.value if parsed.ok else None), parsed.failure, result
    messages = [{"role": "system", "content": messages[0]["content"] + JSON_INSTRUCTION}, *messages[1:]]
    req = ChatRequest(messages=messages, temperature=0.0, template_hash=TEMPLATE_HASH)
    parsed, result = gw.chat_json("judge", req, scores_schema(inst.skills), attempts=2)
    if not parsed.ok or parsed.value is None:
        return None, parsed.failure, result
    raw = parsed.value.scores.model_dump(by_alias=True)
    return {k: (None if v == "N/A" else float(v)) for k, v in raw.items()}, None, result


def judge(gw: Gateway, model_id: str, instances: list[Instance], answers: dict[int, str],
          json_output: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    def one(inst: Instance) -> dict[str, Any]:
        scores, failure, result = _ask(gw, inst, answers[inst.idx], json_output)
        return {"idx": inst.idx, "model": model_id, "skills": inst.skills, "domains": inst.domains,
                "difficulty": inst.difficulty, "scores": scores, "judgment": result.text or result.error or "",
                "parse_failure": failure, "tstamp": time.time(), "provenance": result.provenance}  # fmt: skip

    return gw.map("judge", one, instances, desc=f"FLASK {model_id}")


def _answers(path: Path) -> dict[int, str]:
    if not path.exists():
        raise InputError(f"{path} does not exist; run the generate stage first")
    return {int(row["idx"]): row["answer"] for row in read_appended(path)}


def run_flask(ctx: StageContext, answers_dir: Path, out_dir: Path) -> dict[str, Any]:
    cfg = ctx.params.eval
    gw = ctx.gateway
    instances = load_instances(Path(cfg.flask.data), cfg.flask.limit)
    annotation_failures = 0
    if cfg.flask.annotate:
        instances, annotation_failures = annotate(gw, instances, cfg.seed)
    usable = [i for i in instances if i.annotated]
    skipped = len(instances) - len(usable)
    if not usable:
        raise InputError(f"{cfg.flask.data}: no instance has skills, domains and difficulty (annotation failed)")
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {"instances": len(instances), "annotation_failures": annotation_failures,
                               "unlabelled_skipped": skipped}  # fmt: skip
    for who in (cfg.candidate, cfg.baseline):
        answers = _answers(answers_dir / f"{who.model_id}.jsonl")
        missing = [i.idx for i in usable if i.idx not in answers]
        if missing:
            raise InputError(f"no FLASK answers of {who.model_id} for instances {missing[:10]}; run generate first")
        judged = judge(gw, who.model_id, usable, answers, cfg.judge_output == "json")
        rows += judged
        metrics[who.model_id] = aggregate(judged)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", gw.model_name("judge"))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / f"{name}.jsonl", rows)
    write_jsonl(out_dir / "instances.jsonl", [i.__dict__ for i in instances])
    m = metrics[cfg.candidate.model_id]
    log.info("FLASK %s: %d skills scored, %d parse failures", cfg.candidate.model_id, len(m["skill"]),
             m["parse_failures"])  # fmt: skip
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
