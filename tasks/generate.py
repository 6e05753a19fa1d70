"""Stage `generate`: MT-Bench answers of the candidate and the baseline, in FastChat's model_answer layout.

Turn 1 is answered first; turn 2 is generated with the whole conversation (question 1, the model's own answer,
question 2), at MT-Bench's per-category temperature. Local models generate in batches with transformers; a
`base_url` generates through that OpenAI-compatible endpoint (via the gateway). Answers are appended question
by question, so a killed run continues where it stopped; a changed model or setting starts the file afresh.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunefold.config import CandidateSettings, EndpointConfig, EvalConfig
from tunefold.mtbench import TEMPERATURE, Question, answer_row, load_answers, load_questions
from tunefold.stage import StageContext, log, stage_main
from tunefold.training import file_hash, fingerprint

# (conversations, temperatures) -> (text, new tokens, stopped at the end-of-turn token) per conversation
Answerer = Callable[[list[list[dict[str, str]]], list[float]], list[tuple[str, int, bool]]]


def _fingerprint(cfg: EvalConfig, who: CandidateSettings, questions_file: Path) -> str:
    adapter = Path(who.adapter) / "adapter_model.safetensors" if who.adapter else None
    return fingerprint(
        who=who.model_dump(), weights=file_hash(adapter) if adapter and adapter.exists() else None,
        questions=file_hash(questions_file), max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
    )  # fmt: skip


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def generate_answers(
    ctx: StageContext, who: CandidateSettings, base_dir: Path, questions: list[Question], out_dir: Path, fp: str
) -> dict[str, Any]:
    cfg = ctx.params.eval
    path, marker = out_dir / f"{who.model_id}.jsonl", out_dir / f".{who.model_id}.fingerprint"
    if not marker.exists() or marker.read_text() != fp:
        path.unlink(missing_ok=True)  # answers of another model or setting: never mix them
        out_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(fp)
    done = load_answers(path)
    todo = [q for q in questions if q.question_id not in done]
    log.info("%s: %d questions, %d already answered", who.model_id, len(questions), len(questions) - len(todo))
    start, tokens, stopped, turns = time.perf_counter(), 0, 0, 0
    answer = _endpoint_answerer(ctx, who) if who.base_url else _local_answerer(cfg, who, base_dir)
    for i in range(0, len(todo), cfg.batch_size):
        chunk = todo[i : i + cfg.batch_size]
        convs = [[{"role": "user", "content": q.turns[0]}] for q in chunk]
        firsts = answer(convs, [TEMPERATURE.get(q.category, 0.7) for q in chunk])
        seconds = answer(
            [[*c, {"role": "assistant", "content": a[0]}, {"role": "user", "content": q.turns[1]}]
             for c, a, q in zip(convs, firsts, chunk, strict=True)],
            [TEMPERATURE.get(q.category, 0.7) for q in chunk],
        )  # fmt: skip
        rows = []
        for q, a1, a2 in zip(chunk, firsts, seconds, strict=True):
            rows.append(answer_row(q.question_id, who.model_id, [a1[0], a2[0]], time.time()))
            tokens += a1[1] + a2[1]
            stopped += a1[2] + a2[2]
            turns += 2
        _append(path, rows)
        log.info("%s: %d/%d questions answered", who.model_id, i + len(chunk), len(todo))
    took = time.perf_counter() - start
    return {"questions": len(questions), "generated": len(todo), "resumed": len(questions) - len(todo),
            "new_tokens": tokens, "tokens_per_second": round(tokens / took, 1) if todo else None,
            "stopped_fraction": round(stopped / turns, 3) if turns else None}  # fmt: skip


def _local_answerer(cfg: EvalConfig, who: CandidateSettings, base_dir: Path) -> Answerer:
    from tunefold.generation import Generator, Prompt
    from tunefold.models import load_tokenizer, load_trained

    model = load_trained(base_dir, who.adapter)
    gen = Generator(model, load_tokenizer(base_dir), cfg.batch_size, cfg.max_new_tokens, cfg.seed)

    def answer(convs: list[list[dict[str, str]]], temps: list[float]) -> list[tuple[str, int, bool]]:
        out = gen.generate([Prompt(c, t) for c, t in zip(convs, temps, strict=True)])
        return [(g.text, g.new_tokens, g.stopped) for g in out]

    return answer


def _endpoint_answerer(ctx: StageContext, who: CandidateSettings) -> Answerer:
    from tunefold.llm import ChatRequest

    cfg = ctx.params.eval
    gw = ctx.gateway
    role = f"candidate:{who.model_id}"
    gw.add_role(role, EndpointConfig(base_url=who.base_url, model=who.model, max_tokens=cfg.max_new_tokens,
                                     seed=cfg.seed))  # fmt: skip

    def answer(convs: list[list[dict[str, str]]], temps: list[float]) -> list[tuple[str, int, bool]]:
        reqs = [ChatRequest(messages=c, temperature=t) for c, t in zip(convs, temps, strict=True)]
        results = gw.batch(role, reqs, desc=f"answers of {who.model_id}")
        return [(r.text or "", r.usage.get("completion_tokens", 0), r.ok) for r in results]

    return answer


def generate(ctx: StageContext, base_dir: Path, out_dir: Path) -> dict[str, Any]:
    cfg = ctx.params.eval
    mt = cfg.mt_bench
    qfile = Path(mt.questions)
    questions = load_questions(qfile, Path(mt.references) if mt.references else None, mt.question_ids or None)
    metrics: dict[str, Any] = {}
    models = [cfg.candidate, *([cfg.baseline] if mt.pairwise else [])]
    for who in models:
        metrics[who.model_id] = generate_answers(ctx, who, base_dir, questions, out_dir, _fingerprint(cfg, who, qfile))
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=Path, required=True, help="base model directory")
    p.add_argument("--out", type=Path, required=True, help="model_answer directory (FastChat layout)")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return generate(ctx, args.base, args.out)


def main(argv: list[str] | None = None) -> int:
    return stage_main("generate", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
