"""FRACTAL on the training side: the scorer learns from the judge's ratings of the curriculum's own answers (in
`difficulty`, the target answer and the student's answer to each instruction), never from a benchmark, and scores
both sides of DPO's preference pairs.

Cross-fitted: instructions fall into `folds` seeded folds and the scorer of fold f trains on the other folds, so
every answer and every pair is scored by a scorer that never saw its instruction, and the response AUC over all
judged answers is out-of-sample. A pair whose instruction was not judged (the input's own pairs) is scored by the
scorer of the fold its instruction hashes to, which did not see it either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tunefold.config import FractalConfig
from tunefold.data.records import Record
from tunefold.errors import InputError
from tunefold.fractal.aggregate import per_response
from tunefold.fractal.auc import auc_roc
from tunefold.fractal.bags import Response, to_bags

if TYPE_CHECKING:
    from tunefold.fractal.embed import Embedder
    from tunefold.fractal.scorer import Scorer


def fold_of(instruction: str, folds: int, seed: int) -> int:
    """A stable fold per instruction text (whitespace and case ignored), the same in every run and stage."""
    key = f"{seed}:{' '.join(instruction.split()).casefold()}".encode()
    return int(hashlib.sha256(key).hexdigest(), 16) % folds


def judged_answers(records: list[Record]) -> list[Response]:
    """Both judged answers of every scored instruction: the target answer (`teacher_score`) and the student's
    (`student_score`), each rated 1-10 by the judge, normalised to [0, 1]."""
    out = []
    for r in records:
        m = r.metadata
        if m.get("teacher_score") is None or m.get("student_score") is None or not m.get("student_response"):
            continue
        key = {"source": "curriculum", "id": r.id}
        out.append(Response(key | {"answer": "target"}, r.instruction, None, r.response, m["teacher_score"] / 10))
        out.append(
            Response(key | {"answer": "student"}, r.instruction, None, m["student_response"], m["student_score"] / 10)
        )
    return out


@dataclass
class CrossFit:
    scorers: list[Scorer | None]  # one per fold; None when the other folds hold no labelled answer
    full: Scorer  # trained on every judged answer: what scores answers outside this data (the benchmark's)
    answer_scores: list[float | None]  # each answer's aggregated sentence score from its out-of-fold scorer
    stats: dict[str, Any]


def crossfit(answers: list[Response], embedder: Embedder, cfg: FractalConfig) -> CrossFit:
    """Train one scorer per fold on the answers of the other folds and score each answer with its own fold's;
    then one scorer on all of them, for answers that are in no fold."""
    import torch

    from tunefold.fractal.scorer import train_scorer

    scorable = [a for a in answers if a.spans]
    if not scorable:
        raise InputError("no judged training answer has a sentence: nothing to learn sentence scores from")
    data = to_bags(scorable, embedder, cfg)
    folds = [fold_of(a.question, cfg.folds, cfg.seed) for a in scorable]
    scores: list[float | None] = [None] * len(scorable)
    scorers: list[Scorer | None] = []
    per_fold = []
    for f in range(cfg.folds):
        outside = torch.tensor([k != f for k in folds])
        train = replace(data, labels=data.labels.masked_fill(~outside, float("nan")))
        if bool(torch.isnan(train.labels).all()):
            scorers.append(None)
            per_fold.append({"fold": f, "trained_on": 0})
            continue
        scorer, stats = train_scorer(train, cfg)
        scorers.append(scorer)
        per_fold.append({"fold": f, "trained_on": stats["responses"], "degenerate_labels": stats["degenerate_labels"]})
        mine = per_response(scorer.predict(data).tolist(), [len(a.spans) for a in scorable], cfg.aggregation)
        for i, k in enumerate(folds):
            if k == f:
                scores[i] = mine[i]
    full, full_stats = train_scorer(data, cfg)
    by_answer = {id(a): s for a, s in zip(scorable, scores, strict=True)}
    answer_scores = [by_answer.get(id(a)) for a in answers]
    rated = [(a.judge_score, s) for a, s in zip(answers, answer_scores, strict=True)]
    rated = [(y, s) for y, s in rated if y is not None and s is not None]
    good = [int(y >= cfg.label_threshold) for y, _ in rated]
    auc = round(auc_roc(good, [s for _, s in rated]), 4) if 0 < sum(good) < len(good) else None
    stats = {"answers": len(answers), "instructions": len({a.question for a in answers}), "folds": per_fold}
    stats |= {"full": {"trained_on": full_stats["responses"], "degenerate_labels": full_stats["degenerate_labels"]}}
    return CrossFit(scorers, full, answer_scores, stats | {"auc_crossfit": auc, "auc_answers": len(rated)})


def pair_scores(
    pairs: list[Record], fit: CrossFit, embedder: Embedder, cfg: FractalConfig
) -> list[tuple[float, float] | None]:
    """(chosen, rejected) aggregated sentence scores of each pair, from the scorer of its instruction's fold; None
    when a side has no sentence or that fold has no scorer."""
    sides = [Response({}, p.instruction, None, text, None) for p in pairs for text in (p.response, p.rejected or "")]
    scorable = [s for s in sides if s.spans]
    out: list[tuple[float, float] | None] = [None] * len(pairs)
    if not scorable:
        return out
    data = to_bags(scorable, embedder, cfg)
    sizes = [len(s.spans) for s in scorable]
    how = cfg.aggregation
    by_fold = [None if s is None else per_response(s.predict(data).tolist(), sizes, how) for s in fit.scorers]
    position = {id(s): i for i, s in enumerate(scorable)}
    for k, p in enumerate(pairs):
        chosen, rejected = sides[2 * k], sides[2 * k + 1]
        aggregated = by_fold[fold_of(p.instruction, cfg.folds, cfg.seed)]
        if aggregated is not None and id(chosen) in position and id(rejected) in position:
            out[k] = (aggregated[position[id(chosen)]], aggregated[position[id(rejected)]])
    return out
