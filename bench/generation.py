"""Benchmark: our batched generator vs one-question-at-a-time `model.generate` (what FastChat's gen_model_answer
does), same model, prompts and greedy settings; MT-Bench's first turns at their category temperatures in one batch
vs one batch per temperature (one `generate` call per sampling setting, as the generator did before); then
single-answer judging at concurrency 8 vs 1; and `eval.backend` hf (transformers, batched) vs llamacpp (the model
exported as an f16 GGUF, answered by the embedded server) on the same greedy first turns.

Run: .venv/bin/python bench/generation.py [--questions PATH] [--max-new-tokens 64] [--batch-size 8] [--backends-only]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunefold.eval.generation import Generator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=Path, default=ROOT / "data/benchmarks/mt_bench_mini/question.jsonl")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backends-only", action="store_true", help="only the hf vs llamacpp comparison")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from bench.common import base_model
    from tunefold.eval.generation import Generator, Prompt
    from tunefold.eval.mtbench import load_questions
    from tunefold.train.models import load_model, load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        base = base_model(Path(tmp))
        model, tok = load_model(base), load_tokenizer(base)
        questions = load_questions(args.questions)
        convs = [[{"role": "user", "content": q.turns[0]}] for q in questions]
        print(json.dumps(bench_backends(base, convs, args.max_new_tokens, args.batch_size), indent=2), flush=True)
        if args.backends_only:
            return

        t0 = time.perf_counter()
        plain_tokens = 0
        for conv in convs:  # the baseline: one question at a time
            ids = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            with torch.no_grad():
                out = model.generate(
                    **ids,
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
            new = out[0, ids["input_ids"].shape[1] :].tolist()
            plain_tokens += new.index(tok.eos_token_id) if tok.eos_token_id in new else len(new)
        plain = time.perf_counter() - t0

        gen = Generator(model, tok, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        t0 = time.perf_counter()
        outs = gen.generate([Prompt(c, 0.0) for c in convs])
        ours = time.perf_counter() - t0
        ours_tokens = sum(o.new_tokens for o in outs)
        result = {
            "questions": len(convs),
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "plain_s": round(plain, 1),
            "plain_tokens_per_s": round(plain_tokens / plain, 1),
            "batched_s": round(ours, 1),
            "batched_tokens_per_s": round(ours_tokens / ours, 1),
            "tokens_per_s_ratio": round((ours_tokens / ours) / (plain_tokens / plain), 2),
        }
        print(json.dumps(result, indent=2), flush=True)
        print(json.dumps(bench_temperatures(gen, questions), indent=2), flush=True)
        print(json.dumps(bench_judging(questions, [o.text for o in outs], Path(tmp)), indent=2))


def bench_backends(base: Path, convs: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int) -> dict:
    """Greedy answers of the base through transformers and through llama.cpp (the export and the server's start
    counted in): time, tokens/s and how many answers are the same text."""
    from tunefold.config import EmbeddedServerConfig, EvalConfig
    from tunefold.eval.generation import hf_answerer
    from tunefold.eval.gguf_answer import gguf_answerer
    from tunefold.train.models import embedded_gguf

    cfg = EvalConfig(protocol="quick", max_new_tokens=max_new_tokens, batch_size=batch_size)
    temps = [0.0] * len(convs)
    out: dict[str, Any] = {"questions": len(convs), "max_new_tokens": max_new_tokens}
    texts = {}
    for name in ("hf", "llamacpp"):
        t0 = time.perf_counter()
        if name == "hf":
            answers = hf_answerer(cfg, base, None)(convs, temps)
        else:
            with gguf_answerer(cfg, embedded_gguf(), EmbeddedServerConfig(), base, None) as answer:
                answers = answer(convs, temps)
        seconds = time.perf_counter() - t0
        texts[name] = [a[0] for a in answers]
        out[f"{name}_s"] = round(seconds, 1)
        out[f"{name}_tokens_per_s"] = round(sum(a[1] for a in answers) / seconds, 1)
    out["ratio"] = round(out["llamacpp_tokens_per_s"] / out["hf_tokens_per_s"], 2)
    out["same_text"] = sum(a == b for a, b in zip(texts["hf"], texts["llamacpp"], strict=True))
    return out


def bench_temperatures(gen: Generator, questions: list) -> dict:
    """Turn 1 of every question at MT-Bench's temperature for its category: one batch per temperature, then
    all in one batch. The greedy answers must agree; the sampled ones depend on the batch (seeded)."""
    from tunefold.eval.generation import Prompt
    from tunefold.eval.mtbench import TEMPERATURE

    prompts = [Prompt([{"role": "user", "content": q.turns[0]}], TEMPERATURE[q.category]) for q in questions]
    temps = sorted({p.temperature for p in prompts})
    t0 = time.perf_counter()
    split = [None] * len(prompts)
    for temp in temps:
        idx = [i for i, p in enumerate(prompts) if p.temperature == temp]
        for i, out in zip(idx, gen.generate([prompts[i] for i in idx]), strict=True):
            split[i] = out
    split_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mixed = gen.generate(prompts)
    mixed_s = time.perf_counter() - t0
    greedy = [i for i, p in enumerate(prompts) if p.temperature == 0]
    return {
        "temperatures": {
            str(t): sum(p.temperature == t for p in prompts) for t in sorted({p.temperature for p in prompts})
        },
        "per_temperature_s": round(split_s, 1),
        "per_temperature_tokens_per_s": round(sum(o.new_tokens for o in split) / split_s, 1),
        "one_batch_s": round(mixed_s, 1),
        "one_batch_tokens_per_s": round(sum(o.new_tokens for o in mixed) / mixed_s, 1),
        "greedy_answers_equal": all(split[i].text == mixed[i].text for i in greedy),
    }


def bench_judging(questions: list, answers: list[str], work: Path) -> dict:
    """Single-answer grading of every turn-1 answer through the gateway, concurrency 8 vs 1 (fresh caches)."""
    from tunefold.config import EndpointConfig, LLMConfig
    from tunefold.eval.judge import ask_judge
    from tunefold.eval.mtbench import load_judge_prompts, prompt_for, single_messages
    from tunefold.llm import Gateway

    prompts = load_judge_prompts(None)
    out: dict[str, float | int] = {"judgments": len(questions)}

    def grade(gw: Gateway, qa: tuple) -> object:
        p = prompt_for(prompts, "single", qa[0], 1)
        return ask_judge(gw, "single", single_messages(p, qa[0], [qa[1], ""], 1), p, True)

    for conc in (1, 8):
        cfg = LLMConfig(judge=EndpointConfig(concurrency=conc, max_tokens=128))
        with Gateway(cfg, "bench", work / f"judge{conc}") as gw:
            gw.endpoint("judge")
            t0 = time.perf_counter()
            gw.map("judge", lambda qa, gw=gw: grade(gw, qa), list(zip(questions, answers, strict=True)), desc="judging")
            out[f"concurrency_{conc}_s"] = round(time.perf_counter() - t0, 1)
    return out


if __name__ == "__main__":
    main()
