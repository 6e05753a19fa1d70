"""Stage `sentence_scores`: FRACTAL sentence-level scores learned from the judges' response-level ratings.

Reads the MT-Bench single-answer judgments (and the FLASK judgments when given) with the answers they rate,
splits every answer into sentences, embeds them with their context (question, reference answer), trains the
FRACTAL scorer (`tunefold.fractal.scorer`) on the answers to all but a held-out share of the questions
(`fractal.heldout_fraction`) and writes, for every judged answer, each sentence's score; the response AUC is
reported on the held-out questions (and, as an upper bound, on the training ones).

Bad input: a judgment whose rating could not be parsed (-1) is scored but not trained on; an empty answer gets a
row with no sentences; a one-sentence answer trains as a fully labelled sentence; if every answer has the same
label the judge says nothing about which sentence is better: a warning, and the scores come from the priors.
All are counted in the metrics. With `fractal.preference_pairs` it also writes DPO pairs (`tunefold.fractal.pairs`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tunefold.data.records import read_records
from tunefold.errors import InputError
from tunefold.eval.mtbench import load_questions
from tunefold.fractal.aggregate import Aggregation, hard_aggregate
from tunefold.fractal.auc import auc_roc
from tunefold.fractal.bags import Response, flask_responses, heldout, label_of, mt_bench_responses, to_bags
from tunefold.io import write_jsonl
from tunefold.pipeline.stage import StageContext, log, stage_main


def _auc(rows: list[dict[str, Any]], threshold: float) -> float | None:
    """AUC of the response scores against the judge's good/not good; None with fewer than one of each."""
    good = [int(row["judge_score"] >= threshold) for row in rows]
    return round(auc_roc(good, [row["response_score"] for row in rows]), 4) if 0 < sum(good) < len(good) else None


def _row(r: Response, scores: list[float], label: float | None, how: Aggregation) -> dict[str, Any]:
    sentences = [
        {"text": s.text, "kind": s.kind, "start": s.start, "end": s.end, "score": round(x, 4)}
        for s, x in zip(r.spans, scores, strict=True)
    ]
    agg = round(hard_aggregate(scores, how), 4) if scores else None
    return r.key | {"judge_score": r.judge_score, "label": label, "response_score": agg, "sentences": sentences}


def run_sentence_scores(
    ctx: StageContext,
    judgments: Path,
    answers: Path,
    flask_judgments: Path | None,
    flask_answers: Path | None,
    out_dir: Path,
    scorer_path: Path,
) -> dict[str, Any]:
    import torch

    from tunefold.fractal.embed import Embedder
    from tunefold.fractal.scorer import train_scorer

    cfg = ctx.params.fractal
    mt = ctx.params.eval.mt_bench
    questions = load_questions(Path(mt.questions), Path(mt.references) if mt.references else None)
    responses = mt_bench_responses(judgments, answers, questions)
    if flask_judgments is not None and flask_answers is not None:
        responses += flask_responses(flask_judgments, flask_answers)
    empty = [r for r in responses if not r.spans]
    scorable = [r for r in responses if r.spans]
    unrated = sum(r.judge_score is None for r in responses)
    single = sum(len(r.spans) == 1 for r in scorable)
    if empty:
        log.warning(
            "%d judged answer(s) are empty: no sentence to score (kept with an empty sentence list)", len(empty)
        )
    if unrated:
        log.warning("%d judgment(s) have no usable rating (parse failure): scored, not trained on", unrated)
    if single:
        log.info("%d answer(s) have a single sentence: their label is that sentence's label", single)
    if not scorable:
        raise InputError(f"all {len(responses)} judged answers are empty: there is no sentence to score")
    t0 = time.perf_counter()
    embedder = Embedder(cfg.embedding_model, cfg.embedding_batch_size)
    data = to_bags(scorable, embedder, cfg)
    embed_s = time.perf_counter() - t0
    held = heldout(scorable, cfg.heldout_fraction, cfg.seed)
    train_data = replace(data, labels=data.labels.masked_fill(torch.tensor(held), float("nan")))
    t0 = time.perf_counter()
    scorer, stats = train_scorer(train_data, cfg)
    train_s = time.perf_counter() - t0
    flat = scorer.predict(data).tolist()
    rows, at = [], 0
    for r, out in zip(scorable, held, strict=True):
        n = len(r.spans)
        rows.append(_row(r, flat[at : at + n], label_of(r.judge_score, cfg), cfg.aggregation) | {"heldout": out})
        at += n
    rows += [_row(r, [], label_of(r.judge_score, cfg), cfg.aggregation) | {"heldout": None} for r in empty]
    write_jsonl(out_dir / "scores.jsonl", rows)
    scorer.save(scorer_path)
    rated = [row for row in rows if row["judge_score"] is not None and row["response_score"] is not None]
    metrics: dict[str, Any] = {
        "answers": len(responses),
        "sentences": len(flat),
        "parse_failures": unrated,
        "empty_answers": len(empty),
        "one_sentence_answers": single,
        "good_answers": sum(row["judge_score"] >= cfg.label_threshold for row in rated),
        "low_scored_sentences": sum(x < cfg.low_score for x in flat),
        "heldout_answers": sum(held),
        "train": stats,
        "embedding_seconds": round(embed_s, 3),
        "training_seconds": round(train_s, 3),
        # how well the aggregated sentence scores separate the answers the judge found good: on questions the
        # scorer never saw (the number to read), and on its own training answers (an upper bound)
        "response_auc_heldout": _auc([row for row in rated if row["heldout"]], cfg.label_threshold),
        "response_auc_train": _auc([row for row in rated if not row["heldout"]], cfg.label_threshold),
    }
    if cfg.preference_pairs:
        from tunefold.fractal.pairs import preference_pairs

        pairs, metrics["preference_pairs"] = preference_pairs(read_records(cfg.pairs_from), scorer, embedder, cfg)
        write_jsonl(out_dir / "preference_pairs.jsonl", pairs)
    log.info(
        "sentence scores: %d answers, %d sentences (%d below %.2f); response AUC %s on %d held-out answers",
        len(responses),
        len(flat),
        metrics["low_scored_sentences"],
        cfg.low_score,
        metrics["response_auc_heldout"],
        metrics["heldout_answers"],
    )
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judgments", type=Path, required=True, help="MT-Bench model_judgment directory")
    p.add_argument("--answers", type=Path, required=True, help="MT-Bench model_answer directory")
    p.add_argument("--flask-judgments", type=Path, help="FLASK judgment directory (with instances.jsonl)")
    p.add_argument("--flask-answers", type=Path, help="FLASK answers directory")
    p.add_argument("--out", type=Path, required=True, help="directory for scores.jsonl (and preference pairs)")
    p.add_argument("--scorer", type=Path, required=True, help="where to save the trained scorer (.pt)")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_sentence_scores(
        ctx, args.judgments, args.answers, args.flask_judgments, args.flask_answers, args.out, args.scorer
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("sentence_scores", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
