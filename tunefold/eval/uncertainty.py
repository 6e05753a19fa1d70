"""Bootstrap intervals over questions: how far a mean of a few dozen judged questions can be trusted.

The unit resampled is the question (or FLASK instance), not the single rating: the two turns of one MT-Bench
question are not independent draws. Paired intervals resample the questions both models answered, so a
difference between two models is measured on the same questions. 95% percentile intervals from 2,000 seeded
resamples: deterministic, and cheap for benchmark-sized data.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

SAMPLES = 2000
CONFIDENCE = 0.95


def _percentiles(stats: list[float], confidence: float) -> tuple[float, float]:
    stats.sort()
    tail = (1 - confidence) / 2
    lo = stats[int(tail * (len(stats) - 1))]
    hi = stats[round((1 - tail) * (len(stats) - 1))]
    return round(lo, 3), round(hi, 3)


def question_interval(
    scores: Mapping[object, Sequence[float]], seed: int = 0, samples: int = SAMPLES, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Interval of the mean of all scores, resampling whole questions (`scores`: question -> its valid ratings).

    None with fewer than two questions: one question says nothing about the spread.
    """
    groups = [list(v) for v in scores.values() if v]
    if len(groups) < 2:
        return None
    rng = random.Random(seed)
    stats = []
    for _ in range(samples):
        pick = [groups[rng.randrange(len(groups))] for _ in groups]
        flat = [x for g in pick for x in g]
        stats.append(sum(flat) / len(flat))
    return _percentiles(stats, confidence)


def paired_interval(
    a: Mapping[object, float],
    b: Mapping[object, float],
    seed: int = 0,
    samples: int = SAMPLES,
    confidence: float = CONFIDENCE,
) -> dict[str, float | int | None] | None:
    """Mean difference a - b over the questions both have (per-question means), with its bootstrap interval.

    None when fewer than two questions are shared.
    """
    shared = sorted(set(a) & set(b), key=str)
    if len(shared) < 2:
        return None
    diffs = [a[q] - b[q] for q in shared]
    rng = random.Random(seed)
    stats = []
    for _ in range(samples):
        pick = [diffs[rng.randrange(len(diffs))] for _ in diffs]
        stats.append(sum(pick) / len(pick))
    lo, hi = _percentiles(stats, confidence)
    return {"difference": round(sum(diffs) / len(diffs), 3), "low": lo, "high": hi, "questions": len(shared)}


def per_question_means(rows: Sequence[Mapping[str, object]], key: str = "question_id") -> dict[str, float]:
    """question -> mean of its valid scores (score >= 0), keyed by str so it survives a JSON round trip."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        score = float(r["score"])  # type: ignore[arg-type]
        if score >= 0:
            sums.setdefault(str(r[key]), []).append(score)
    return {q: round(sum(v) / len(v), 4) for q, v in sums.items()}
