"""Stage `mt_bench`: LLM-as-judge grading of the generated answers, MT-Bench protocol.

Single-answer grading: every turn rated 1-10 (turn 2 with the whole conversation shown; math, reasoning and
coding against the reference answer), judge at temperature 0. Pairwise: candidate vs baseline in both orders;
a win counts only when both orders agree. Judgments are written in FastChat's model_judgment layout. A reply
without a parseable rating is stored with score -1, counted per category, and never averaged in.
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
    load_answers,
    load_judge_prompts,
    load_questions,
    pair_messages,
    prompt_for,
    single_messages,
)
from tunefold.io import write_jsonl
from tunefold.llm import Gateway
from tunefold.pipeline.fanout import fan_out
from tunefold.pipeline.stage import StageContext, log, stage_main


def judge_single(gw: Gateway, model_id: str, questions: list[Question], answers: dict[int, list[str]],
                 prompts: dict, json_output: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    jobs = [(q, turn) for q in questions for turn in (1, 2)]

    def one(job: tuple[Question, int]) -> dict[str, Any]:
        q, turn = job
        p = prompt_for(prompts, "single", q, turn)
        messages = single_messages(p, q, answers[q.question_id], turn)
        value, failure, result = ask_judge(gw, "single", messages, p, json_output)
        return {"question_id": q.question_id, "model": model_id, "judge": [result.provenance["model"], p.name],
                "user_prompt": messages[1]["content"], "judgment": result.text or result.error or "",
                "score": value if value is not None else -1, "turn": turn, "tstamp": time.time(),
                "category": q.category, "parse_failure": failure, "provenance": result.provenance}  # fmt: skip

    return gw.map("judge", one, jobs, desc=f"single-answer grading of {model_id}")


def _winner(verdict: str | None, candidate_is_a: bool) -> str | None:
    if verdict is None:
        return None
    if verdict == "C":
        return "tie"
    return "model_1" if (verdict == "A") == candidate_is_a else "model_2"


def judge_pairs(
    gw: Gateway, m1: str, m2: str, questions: list[Question], a1: dict[int, list[str]], a2: dict[int, list[str]],
    prompts: dict, json_output: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    jobs = [(q, turn) for q in questions for turn in (1, 2)]

    def one(job: tuple[Question, int]) -> dict[str, Any]:
        q, turn = job
        p = prompt_for(prompts, "pairwise", q, turn)
        verdicts, texts, failures = [], [], []
        for candidate_is_a in (True, False):
            first, second = (a1, a2) if candidate_is_a else (a2, a1)
            messages = pair_messages(p, q, first[q.question_id], second[q.question_id], turn)
            value, failure, result = ask_judge(gw, "pairwise", messages, p, json_output)
            verdicts.append(_winner(value, candidate_is_a))
            texts.append(result.text or result.error or "")
            failures.append(failure)
        return {"question_id": q.question_id, "model_1": m1, "model_2": m2, "g1_winner": verdicts[0] or "error",
                "g2_winner": verdicts[1] or "error", "result": combine_orders(*verdicts),
                "judge": [result.provenance["model"], p.name], "g1_judgment": texts[0], "g2_judgment": texts[1],
                "turn": turn, "tstamp": time.time(), "category": q.category, "parse_failures": failures,
                "provenance": result.provenance}  # fmt: skip

    return gw.map("judge", one, jobs, desc=f"pairwise {m1} vs {m2}")


def judge_questions(gw: Gateway, cfg: EvalConfig, questions: list[Question], cand: dict[int, list[str]],
                    base: dict[int, list[str]] | None, prompts: dict) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """Single-answer judgments of the candidate (and the baseline), and pairwise ones when asked for."""
    as_json = cfg.judge_output == "json"
    single = judge_single(gw, cfg.candidate.model_id, questions, cand, prompts, as_json)
    pairs: list[dict[str, Any]] = []
    if base is not None:
        single += judge_single(gw, cfg.baseline.model_id, questions, base, prompts, as_json)
        pairs = judge_pairs(gw, cfg.candidate.model_id, cfg.baseline.model_id, questions, cand, base, prompts, as_json)
    return single, pairs


def judge_shard(questions: list[Question], params: Params, cand: dict[int, list[str]],
                base: dict[int, list[str]] | None, prompts: dict) -> tuple[list[dict], list[dict], dict]:  # fmt: skip
    """One Dask worker's share: its own gateway (and embedded server); returns its LLM metrics too."""
    with Gateway(params.llm, stage="mt_bench") as gw:
        single, pairs = judge_questions(gw, params.eval, questions, cand, base, prompts)
        return single, pairs, gw.metrics()


def _order(rows: list[dict[str, Any]], candidate: str) -> list[dict[str, Any]]:
    """One row order however the work was split: candidate first, then by question and turn."""
    return sorted(rows, key=lambda r: (r.get("model", r.get("model_1")) != candidate, r["question_id"], r["turn"]))


def run_mt_bench(ctx: StageContext, answers_dir: Path, out_dir: Path) -> dict[str, Any]:
    cfg = ctx.params.eval
    mt = cfg.mt_bench
    questions = load_questions(Path(mt.questions), Path(mt.references) if mt.references else None,
                               mt.question_ids or None)  # fmt: skip
    prompts = load_judge_prompts(Path(mt.judge_prompts) if mt.judge_prompts else None)
    cand = load_answers(answers_dir / f"{cfg.candidate.model_id}.jsonl")
    missing = [q.question_id for q in questions if q.question_id not in cand]
    if missing:
        raise InputError(f"no answers of {cfg.candidate.model_id} for questions {missing[:10]}; run `generate` first")
    base = load_answers(answers_dir / f"{cfg.baseline.model_id}.jsonl") if mt.pairwise else None
    gw = ctx.gateway
    judge = re.sub(r"[^A-Za-z0-9._-]+", "-", gw.model_name("judge"))
    metrics: dict[str, Any] = {"judge": judge, "candidate": cfg.candidate.model_id}
    if cfg.fanout.active:
        n = cfg.fanout.shards or max(cfg.fanout.workers, 1)
        shards = [questions[i::n] for i in range(n) if questions[i::n]]
        log.info("judging %d questions in %d shards on Dask workers", len(questions), len(shards))
        done = fan_out(judge_shard, shards, cfg.fanout, params=ctx.params, cand=cand, base=base, prompts=prompts)
        single, pairs = [r for s, _, _ in done for r in s], [r for _, p, _ in done for r in p]
        metrics["llm_shards"] = [m for _, _, m in done]
    else:
        single, pairs = judge_questions(gw, cfg, questions, cand, base, prompts)
    single, pairs = _order(single, cfg.candidate.model_id), _order(pairs, cfg.candidate.model_id)
    if base is not None:
        metrics["pairwise_vs_" + cfg.baseline.model_id] = aggregate_pairs(pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / f"{judge}_single.jsonl", single)
    write_jsonl(out_dir / f"{judge}_pair.jsonl", pairs)
    for model_id in {r["model"] for r in single}:
        metrics[model_id] = aggregate_single([r for r in single if r["model"] == model_id])
    score = metrics[cfg.candidate.model_id]["overall"]
    log.info("MT-Bench %s: %s over %d ratings (%d parse failures)", cfg.candidate.model_id, score["mean"],
             score["judged"], score["parse_failures"])  # fmt: skip
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
