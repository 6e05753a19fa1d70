"""Stage `fractal_pairs`: FRACTAL sentence scores enter DPO.

The scorer learns from the judge's ratings of the curriculum's own answers (`difficulty`: the target answer and the
student's answer to every scored instruction, kept or fitted), cross-fitted over instruction folds
(`tunefold.fractal.crossfit`), so no benchmark is ever trained on and every score is out-of-sample. Both sides of
every preference pair (the plan's curriculum pairs and the input's own) get their aggregated sentence score.
With `fractal.pairs: agree` a pair whose chosen answer scores below its rejected one is dropped as a likely
mislabelled pair, but only when the scorer's cross-fitted AUC on the judged answers reaches `fractal.min_auc`; a
scorer that cannot tell good answers from bad ones drops nothing, and the report says so.

Outputs (in --out): preferences.jsonl (the DPO data; each pair with its `fractal` scores), dropped.jsonl (pair +
reason), contaminated.jsonl (pairs containing an evaluation question, `tunefold.data.decontam`), answers.jsonl
(each judged training answer's out-of-fold score), report.md. pairs in = kept + dropped + contaminated.
--scorer: a scorer trained on every judged answer, which `sentence_scores` applies to the benchmark's answers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tunefold.data.decontam import decontaminate
from tunefold.data.records import Record, read_records
from tunefold.fractal.crossfit import crossfit, judged_answers, pair_scores
from tunefold.io import read_jsonl, write_jsonl, write_text
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.pipeline.summary import md_table


def _judged(difficulty_dir: Path) -> list[Record]:
    """`difficulty`'s kept records and those it dropped (the fitted ones carry both ratings too)."""
    kept = read_records(difficulty_dir / "records.jsonl", allow_empty=True)
    dropped = [Record(**row["record"]) for row in read_jsonl(difficulty_dir / "dropped.jsonl")]
    return kept + dropped


def run_fractal_pairs(
    ctx: StageContext, difficulty_dir: Path, pairs_path: Path, out_dir: Path, scorer_path: Path
) -> dict[str, Any]:
    from tunefold.fractal.embed import Embedder

    cfg = ctx.params.fractal
    answers = judged_answers(_judged(difficulty_dir))
    embedder = Embedder(cfg.embedding_model, cfg.embedding_batch_size)
    fit = crossfit(answers, embedder, cfg)
    fit.full.meta |= {"trained_on": f"{fit.stats['full']['trained_on']} judged answers of stage difficulty"}
    fit.full.save(scorer_path)
    given = read_records(pairs_path, allow_empty=True)
    pairs, contaminated = decontaminate(given, ctx.params.holdout, ctx.params.eval)
    write_jsonl(out_dir / "contaminated.jsonl", contaminated)
    scored = pair_scores(pairs, fit, embedder, cfg)
    auc = fit.stats["auc_crossfit"]
    trusted = auc is not None and auc >= cfg.min_auc
    filtering = cfg.pairs == "agree" and trusted
    kept, dropped = [], []
    for pair, score in zip(pairs, scored, strict=True):
        note = None if score is None else {"chosen": round(score[0], 4), "rejected": round(score[1], 4)}
        annotated = pair.model_copy(update={"metadata": pair.metadata | {"fractal": note}})
        if filtering and score is not None and score[0] < score[1]:
            why = f"sentence scores rank the rejected answer above the chosen ({score[1]:.3f} > {score[0]:.3f})"
            dropped.append({"record": annotated.model_dump(), "reason": why})
        else:
            kept.append(annotated)
    write_jsonl(out_dir / "preferences.jsonl", [r.model_dump() for r in kept])
    write_jsonl(out_dir / "dropped.jsonl", dropped)
    write_jsonl(
        out_dir / "answers.jsonl",
        [a.key | {"judge_score": a.judge_score, "score": s} for a, s in zip(answers, fit.answer_scores, strict=True)],
    )
    disagree = sum(s is not None and s[0] < s[1] for s in scored)
    if filtering:
        decision = f"pairs the scorer disagrees with were dropped (cross-fitted AUC {auc} >= min_auc {cfg.min_auc})"
    elif cfg.pairs == "keep":
        decision = "every pair kept (fractal.pairs: keep); the scores are recorded"
    else:
        decision = (
            f"every pair kept: the scorer's cross-fitted AUC ({auc}) is below min_auc {cfg.min_auc}, so its "
            "scores are not trusted to drop pairs"
        )
    metrics = {
        "judged_answers": fit.stats["answers"],
        "instructions": fit.stats["instructions"],
        "auc_crossfit": auc,
        "auc_answers": fit.stats["auc_answers"],
        "folds": fit.stats["folds"],
        "scorer": fit.stats["full"],
        "pairs_in": len(given),
        "contaminated": len(contaminated),
        "pairs_scored": sum(s is not None for s in scored),
        "pairs_disagreeing": disagree,
        "filter_applied": filtering,
        "kept": len(kept),
        "dropped": len(dropped),
    }
    rows = [[f["fold"], f["trained_on"]] for f in fit.stats["folds"]]
    write_text(
        out_dir / "report.md",
        "### FRACTAL sentence scores for DPO\n\n"
        f"A scorer cross-fitted over {len(rows)} folds of {metrics['instructions']} judged instructions "
        f"({metrics['judged_answers']} answers) separates the answers the judge rated good with AUC {auc} "
        f"(out-of-fold, {metrics['auc_answers']} answers). {len(contaminated)} pair(s) were left out for containing "
        f"an evaluation question. Of the {len(pairs)} other preference pairs, "
        f"{metrics['pairs_scored']} were scored and {disagree} rank the rejected answer higher: {decision}.\n\n"
        + md_table(["fold", "answers trained on"], rows)
        + "\n",
    )
    log.info("fractal pairs: AUC %s, %d of %d pairs kept (%s)", auc, len(kept), len(pairs), decision)
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judged", type=Path, required=True, help="the difficulty stage's output directory")
    p.add_argument("--pairs", type=Path, required=True, help="preference pairs (plan_curriculum's preferences.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--scorer", type=Path, required=True, help="where to save the scorer trained on every answer (.pt)")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_fractal_pairs(ctx, args.judged, args.pairs, args.out, args.scorer)


def main(argv: list[str] | None = None) -> int:
    return stage_main("fractal_pairs", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
