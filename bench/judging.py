"""Benchmark: wall time of MT-Bench single-answer grading of 80 questions x 2 turns, gateway concurrency 8 vs 1
(sequential), with the embedded llama.cpp judge. Answers come from the base model (short, to keep the run small).

Run: .venv/bin/python bench/judging.py [--questions ../shared/benchmarks/mt_bench/question.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OFFICIAL = ROOT.parent / "shared/benchmarks/mt_bench"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=Path, default=OFFICIAL / "question.jsonl")
    p.add_argument("--references", type=Path, default=OFFICIAL / "reference_answer/gpt-4.jsonl")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.common import base_model
    from tasks.generate import Item, answer_items
    from tasks.mt_bench import judge_single
    from tunefold.config import EndpointConfig, EvalConfig, LLMConfig
    from tunefold.eval.generation import hf_answerer
    from tunefold.eval.mtbench import TEMPERATURE, answer_row, load_answers, load_judge_prompts, load_questions
    from tunefold.eval.protocol import JudgeSettings
    from tunefold.llm import Gateway

    questions = load_questions(args.questions, args.references)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = base_model(work)
        cfg = EvalConfig(max_new_tokens=args.max_new_tokens, batch_size=8)
        answer = hf_answerer(cfg, base, None)  # transformers, batched, as measured on 2026-11-24
        items = [Item(q.question_id, q.turns, TEMPERATURE.get(q.category, 0.7)) for q in questions]
        t0 = time.perf_counter()
        answer_items(
            answer, items, work / "base.jsonl", "bench", lambda it, r: answer_row(it.key, "base", r, 0.0), 8, "answers"
        )
        gen_s = time.perf_counter() - t0
        answers = load_answers(work / "base.jsonl")
        prompts = load_judge_prompts(None)
        out = {"questions": len(questions), "turns_judged": 2 * len(questions), "generation_s": round(gen_s, 1)}
        for conc in (1, 8):
            llm = LLMConfig(judge=EndpointConfig(concurrency=conc, max_tokens=128))
            with Gateway(llm, "bench", work / f"cache{conc}") as gw:
                gw.endpoint("judge")
                t0 = time.perf_counter()
                judge = JudgeSettings("quick", "json", 128, gw.model_name("judge"))
                rows = judge_single(gw, "base", questions, answers, prompts, judge)
                out[f"concurrency_{conc}_s"] = round(time.perf_counter() - t0, 1)
                out[f"concurrency_{conc}_parse_failures"] = sum(r["score"] < 0 for r in rows)
        out["speedup_8_vs_1"] = round(out["concurrency_1_s"] / out["concurrency_8_s"], 2)
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
