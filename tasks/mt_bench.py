"""Stage `mt_bench`: LLM-as-judge grading of the generated answers, MT-Bench protocol.

Single-answer grading: every turn rated 1-10 (turn 2, when the question has one, with the whole conversation
shown; math, reasoning and coding against the reference answer), one greedy judge call each. Pairwise: candidate
vs baseline in both orders; a win counts only when both orders agree. Judgments are written in FastChat's
model_judgment layout. A reply that failed, was cut by max_tokens, did not parse or rated off the scale is stored
with score -1 and its kind (`judge_status`), counted per kind, and never averaged in. The metrics say which
protocol produced the scores and how they differ from the published one (`comparability`).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from tunefold.config import EvalConfig, Params
from tunefold.errors import InputError
from tunefold.eval.judge import ask_judge
from tunefold.eval.mtbench import (
    Question,
    aggregate_pairs,
    aggregate_single,
    combine_orders,
    judged_turns,
    load_answers,
    load_judge_prompts,
    load_questions,
    pair_messages,
    prompt_for,
    require_references,
    single_messages,
)
from tunefold.eval.protocol import JudgeSettings, answer_max_tokens, comparability, judge_settings
from tunefold.eval.uncertainty import paired_interval, per_question_means
from tunefold.io import write_jsonl
from tunefold.llm import Gateway
from tunefold.pipeline.fanout import fan_out
from tunefold.pipeline.stage import StageContext, log, stage_main


def judge_single(
    gw: Gateway,
    model_id: str,
    questions: list[Question],
    answers: dict[int, list[str]],
    prompts: dict,
    judge: JudgeSettings,
) -> list[dict[str, Any]]:
    jobs = [(q, turn) for q in questions for turn in judged_turns(q)]

    def one(job: tuple[Question, int]) -> dict[str, Any]:
        q, turn = job
        p = prompt_for(prompts, "single", q, turn)
        messages = single_messages(p, q, answers[q.question_id], turn)
        j = ask_judge(gw, "single", messages, p, judge.output == "json", judge.max_tokens)
        return {
            "question_id": q.question_id,
            "model": model_id,
            "judge": [j.result.provenance["model"], p.name],
            "user_prompt": messages[1]["content"],
            "judgment": j.result.text or j.result.error or "",
            "score": j.value if j.ok else -1,
            "turn": turn,
            "tstamp": time.time(),
            "category": q.category,
            "judge_status": j.status,
            "failure": j.detail,
            "finish_reason": j.result.finish_reason,
            "provenance": j.result.provenance,
        }

    return gw.map("judge", one, jobs, desc=f"single-answer grading of {model_id}")


def _winner(verdict: str | None, candidate_is_a: bool) -> str | None:
    if verdict is None:
        return None
    if verdict == "C":
        return "tie"
    return "model_1" if (verdict == "A") == candidate_is_a else "model_2"


def judge_pairs(
    gw: Gateway,
    m1: str,
    m2: str,
    questions: list[Question],
    a1: dict[int, list[str]],
    a2: dict[int, list[str]],
    prompts: dict,
    judge: JudgeSettings,
) -> list[dict[str, Any]]:
    """Both orders per turn (g1: m1 shown as A, g2: m1 shown as B); a failed order is `error`, never a verdict."""
    jobs = [(q, turn) for q in questions for turn in judged_turns(q)]

    def one(job: tuple[Question, int]) -> dict[str, Any]:
        q, turn = job
        p = prompt_for(prompts, "pairwise", q, turn)
        orders = []
        for candidate_is_a in (True, False):
            first, second = (a1, a2) if candidate_is_a else (a2, a1)
            messages = pair_messages(p, q, first[q.question_id], second[q.question_id], turn)
            j = ask_judge(gw, "pairwise", messages, p, judge.output == "json", judge.max_tokens)
            orders.append((_winner(j.value if j.ok else None, candidate_is_a), j))
        (v1, j1), (v2, j2) = orders
        return {
            "question_id": q.question_id,
            "model_1": m1,
            "model_2": m2,
            "g1_winner": v1 or "error",
            "g2_winner": v2 or "error",
            "result": combine_orders(v1, v2),
            "judge": [j1.result.provenance["model"], p.name],
            "g1_judgment": j1.result.text or j1.result.error or "",
            "g2_judgment": j2.result.text or j2.result.error or "",
            "turn": turn,
            "tstamp": time.time(),
            "category": q.category,
            "judge_status": [j1.status, j2.status],
            "failures": [j1.detail, j2.detail],
            "provenance": j1.result.provenance,
        }

    return gw.map("judge", one, jobs, desc=f"pairwise {m1} vs {m2}")


def judge_questions(
    gw: Gateway,
    cfg: EvalConfig,
    judge: JudgeSettings,
    questions: list[Question],
    cand: dict[int, list[str]],
    base: dict[int, list[str]] | None,
    prompts: dict,
) -> tuple[list[dict], list[dict]]:
    """Single-answer judgments of the candidate (and the baseline), and pairwise ones when asked for."""
    single = judge_single(gw, cfg.candidate.model_id, questions, cand, prompts, judge)
    pairs: list[dict[str, Any]] = []
    if base is not None:
        single += judge_single(gw, cfg.baseline.model_id, questions, base, prompts, judge)
        pairs = judge_pairs(gw, cfg.candidate.model_id, cfg.baseline.model_id, questions, cand, base, prompts, judge)
    return single, pairs


def judge_shard(
    questions: list[Question],
    params: Params,
    judge: JudgeSettings,
    cand: dict[int, list[str]],
    base: dict[int, list[str]] | None,
    prompts: dict,
) -> tuple[list[dict], list[dict], dict]:
    """One Dask worker's share: its own gateway (and embedded server); returns its LLM metrics too."""
    with Gateway(params.llm, stage="mt_bench") as gw:
        single, pairs = judge_questions(gw, params.eval, judge, questions, cand, base, prompts)
        return single, pairs, gw.metrics()


def _order(rows: list[dict[str, Any]], candidate: str) -> list[dict[str, Any]]:
    """One row order however the work was split: candidate first, then by question and turn."""
    return sorted(rows, key=lambda r: (r.get("model", r.get("model_1")) != candidate, r["question_id"], r["turn"]))


def run_mt_bench(ctx: StageContext, answers_dir: Path, out_dir: Path) -> dict[str, Any]:
    cfg = ctx.params.eval
    mt = cfg.mt_bench
    refs = Path(mt.references) if mt.references else None
    prompts_file = Path(mt.judge_prompts) if mt.judge_prompts else None
    questions = load_questions(Path(mt.questions), refs, mt.question_ids or None)
    require_references(questions, refs)
    prompts = load_judge_prompts(prompts_file)
    cand = load_answers(answers_dir / f"{cfg.candidate.model_id}.jsonl")
    missing = [q.question_id for q in questions if len(cand.get(q.question_id, [])) < len(judged_turns(q))]
    if missing:
        raise InputError(f"no answers of {cfg.candidate.model_id} for questions {missing[:10]}; run `generate` first")
    base = load_answers(answers_dir / f"{cfg.baseline.model_id}.jsonl") if mt.pairwise else None
    gw = ctx.gateway
    judge = judge_settings(cfg, ctx.params.llm, "mt_bench", gw.model_name("judge"))
    judge_file = re.sub(r"[^A-Za-z0-9._-]+", "-", judge.model)
    files = {"questions": Path(mt.questions), "references": refs, "judge_prompts": prompts_file}
    metrics: dict[str, Any] = {
        "judge": judge_file,
        "candidate": cfg.candidate.model_id,
        "settings": {
            "protocol": judge.protocol,
            "judge_output": judge.output,
            "judge_max_tokens": judge.max_tokens,
            "answer_max_tokens": answer_max_tokens(cfg),
            "judge_prompts": "fastchat" if prompts_file else "tunefold",
        },
        "comparability": comparability("mt_bench", cfg, judge, files, len(questions)),
    }
    if cfg.fanout.active:
        n = cfg.fanout.shards or max(cfg.fanout.workers, 1)
        shards = [questions[i::n] for i in range(n) if questions[i::n]]
        log.info("judging %d questions in %d shards on Dask workers", len(questions), len(shards))
        done = fan_out(
            judge_shard, shards, cfg.fanout, params=ctx.params, judge=judge, cand=cand, base=base, prompts=prompts
        )
        single, pairs = [r for s, _, _ in done for r in s], [r for _, p, _ in done for r in p]
        metrics["llm_shards"] = [m for _, _, m in done]
    else:
        single, pairs = judge_questions(gw, cfg, judge, questions, cand, base, prompts)
    single, pairs = _order(single, cfg.candidate.model_id), _order(pairs, cfg.candidate.model_id)
    if base is not None:
        metrics["pairwise_vs_" + cfg.baseline.model_id] = aggregate_pairs(pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / f"{judge_file}_single.jsonl", single)
    write_jsonl(out_dir / f"{judge_file}_pair.jsonl", pairs)
    for model_id in {r["model"] for r in single}:
        metrics[model_id] = aggregate_single([r for r in single if r["model"] == model_id])
    if base is not None:
        means = {
            m: per_question_means([r for r in single if r["model"] == m])
            for m in (cfg.candidate.model_id, cfg.baseline.model_id)
        }
        metrics["paired_vs_" + cfg.baseline.model_id] = paired_interval(*means.values())
    score = metrics[cfg.candidate.model_id]["overall"]
    log.info(
        "MT-Bench %s: %s over %d ratings (%d judge failures: %s); %s",
        cfg.candidate.model_id,
        score["mean"],
        score["judged"],
        score["failures"],
        score["failure_kinds"] or "none",
        metrics["comparability"]["line"],
    )
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--answers", type=Path, required=True, help="model_answer directory from `generate`")
    p.add_argument("--out", type=Path, required=True, help="model_judgment directory to write")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_mt_bench(ctx, args.answers, args.out)


def main(argv: list[str] | None = None) -> int:
    return stage_main("mt_bench", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
