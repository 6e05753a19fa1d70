"""Stage `sentence_scores`: FRACTAL sentence scores of the benchmark's answers, for the report.

The scorer is the one `fractal_pairs` trained on the judge's ratings of the curriculum's own answers; it never sees
a benchmark judgment, so nothing here is trained. It scores every sentence of every judged MT-Bench (and FLASK)
answer, and the response AUC, how well the aggregated scores separate the answers the judge rated good, is
measured on all of them: out-of-sample and across domains (training instructions -> benchmark questions).

Bad input: a judgment whose rating could not be parsed (-1) is scored and left out of the AUC; an empty answer gets
a row with no sentences; a scorer whose input size does not fit the encoder is a clear error. All are counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tunefold.errors import InputError
from tunefold.eval.mtbench import load_questions
from tunefold.fractal.aggregate import per_response
from tunefold.fractal.auc import auc_roc
from tunefold.fractal.bags import Response, flask_responses, label_of, mt_bench_responses, to_bags
from tunefold.io import write_jsonl
from tunefold.pipeline.stage import StageContext, log, stage_main


def _row(r: Response, scores: list[float], label: float | None, response_score: float | None) -> dict[str, Any]:
    sentences = [
        {"text": s.text, "kind": s.kind, "start": s.start, "end": s.end, "score": round(x, 4)}
        for s, x in zip(r.spans, scores, strict=True)
    ]
    score = None if response_score is None else round(response_score, 4)
    return r.key | {"judge_score": r.judge_score, "label": label, "response_score": score, "sentences": sentences}


def run_sentence_scores(
    ctx: StageContext,
    judgments: Path,
    answers: Path,
    flask_judgments: Path | None,
    flask_answers: Path | None,
    out_dir: Path,
    scorer_path: Path,
) -> dict[str, Any]:
    from tunefold.fractal.embed import Embedder
    from tunefold.fractal.scorer import Scorer

    cfg = ctx.params.fractal
    mt = ctx.params.eval.mt_bench
    if not scorer_path.exists():
        raise InputError(f"{scorer_path}: no sentence scorer; stage fractal_pairs trains it (dvc repro fractal_pairs)")
    scorer = Scorer.load(scorer_path)
    questions = load_questions(Path(mt.questions), Path(mt.references) if mt.references else None)
    responses = mt_bench_responses(judgments, answers, questions)
    if flask_judgments is not None and flask_answers is not None:
        responses += flask_responses(flask_judgments, flask_answers)
    empty = [r for r in responses if not r.spans]
    scorable = [r for r in responses if r.spans]
    unrated = sum(r.judge_score is None for r in responses)
    if empty:
        log.warning(
            "%d judged answer(s) are empty: no sentence to score (kept with an empty sentence list)", len(empty)
        )
    if unrated:
        log.warning("%d judgment(s) have no usable rating (parse failure): scored, left out of the AUC", unrated)
    if not scorable:
        raise InputError(f"all {len(responses)} judged answers are empty: there is no sentence to score")
    t0 = time.perf_counter()
    embedder = Embedder(scorer.meta["embedding_model"], cfg.embedding_batch_size)
    data = to_bags(scorable, embedder, cfg)
    if 3 * data.sentences.shape[1] != scorer.meta["input_dim"]:
        raise InputError(
            f"{scorer_path}: the scorer takes {scorer.meta['input_dim'] // 3}-dim embeddings, the encoder "
            f"{scorer.meta['embedding_model']!r} gives {data.sentences.shape[1]}; re-run fractal_pairs"
        )
    flat = scorer.predict(data).tolist()
    sizes = [len(r.spans) for r in scorable]
    aggregated = per_response(flat, sizes, scorer.meta["aggregation"])
    seconds = time.perf_counter() - t0
    rows, at = [], 0
    for r, n, agg in zip(scorable, sizes, aggregated, strict=True):
        rows.append(_row(r, flat[at : at + n], label_of(r.judge_score, cfg), agg))
        at += n
    rows += [_row(r, [], label_of(r.judge_score, cfg), None) for r in empty]
    write_jsonl(out_dir / "scores.jsonl", rows)
    rated = [row for row in rows if row["judge_score"] is not None and row["response_score"] is not None]
    good = [int(row["judge_score"] >= cfg.label_threshold) for row in rated]
    auc = auc_roc(good, [row["response_score"] for row in rated]) if 0 < sum(good) < len(good) else None
    metrics: dict[str, Any] = {
        "answers": len(responses),
        "sentences": len(flat),
        "parse_failures": unrated,
        "empty_answers": len(empty),
        "good_answers": sum(good),
        "low_scored_sentences": sum(x < cfg.low_score for x in flat),
        "scorer": {k: scorer.meta.get(k) for k in ("trained_on", "embedding_model", "aggregation")},
        "scoring_seconds": round(seconds, 3),
        # how well the aggregated sentence scores separate the answers the judge found good, on benchmark answers
        # the scorer never saw (None without at least one good and one not good rated answer)
        "response_auc": None if auc is None else round(auc, 4),
        "response_auc_answers": len(rated),
    }
    log.info(
        "sentence scores: %d answers, %d sentences (%d below %.2f); response AUC %s on %d rated answers "
        "(scorer trained on %s)",
        len(responses),
        len(flat),
        metrics["low_scored_sentences"],
        cfg.low_score,
        metrics["response_auc"],
        len(rated),
        metrics["scorer"]["trained_on"],
    )
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judgments", type=Path, required=True, help="MT-Bench model_judgment directory")
    p.add_argument("--answers", type=Path, required=True, help="MT-Bench model_answer directory")
    p.add_argument("--flask-judgments", type=Path, help="FLASK judgment directory (with instances.jsonl)")
    p.add_argument("--flask-answers", type=Path, help="FLASK answers directory")
    p.add_argument("--out", type=Path, required=True, help="directory for scores.jsonl")
    p.add_argument("--scorer", type=Path, required=True, help="the scorer fractal_pairs trained (.pt)")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_sentence_scores(
        ctx, args.judgments, args.answers, args.flask_judgments, args.flask_answers, args.out, args.scorer
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("sentence_scores", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
