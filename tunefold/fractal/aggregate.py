"""How sentence scores make a response score, and the sentence labels that agree with a response label.

MIN: a response is good only if every sentence is (one bad sentence spoils an MT-Bench answer). MAX: good if any
sentence is (one sentence carries the answer). AVG: the response label is the share of good sentences. MIN and
MAX are trained through smooth versions so that every sentence gets a gradient, not only the extreme one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Aggregation = Literal["min", "max", "avg"]


def soft_aggregate(scores: torch.Tensor, mask: torch.Tensor, how: Aggregation, temperature: float) -> torch.Tensor:
    """Per-row aggregate of padded scores (rows = responses, `mask` marks real sentences), in [min, max] of the row.

    max: the scores' mean weighted by softmax(s/T), a smooth max between the mean (T → ∞) and the max (T → 0);
    min: the same with softmax(−s/T). No term depends on the number of sentences: the former T·(logsumexp − log n)
    moved a response with one 0.2 sentence among 0.9s from 0.43 (10 sentences) to 0.50 (20) at T 0.1, so long
    answers scored as if their bad sentence mattered less. The weights are constants in the backward pass, so each
    sentence's gradient is its weight: positive, largest for the extreme one (through the weights a far-off
    sentence's gradient would turn negative: raising a good sentence would lower a soft min). avg: the mean.
    """
    import torch

    real = mask.any(dim=1)
    if how == "avg":
        return (scores * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
    sign = 1.0 if how == "max" else -1.0
    logits = (sign * scores / temperature).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits.masked_fill(~real[:, None], 0.0), dim=1).detach() * mask  # no sentence: 0
    return (weights * scores).sum(dim=1)


def hard_aggregate(scores: list[float], how: Aggregation) -> float:
    if how == "min":
        return min(scores)
    if how == "max":
        return max(scores)
    return sum(scores) / len(scores)


def per_response(flat: list[float], sizes: list[int], how: Aggregation) -> list[float]:
    """Each response's aggregated score from the sentence scores of consecutive responses of `sizes` sentences."""
    out, at = [], 0
    for n in sizes:
        out.append(hard_aggregate(flat[at : at + n], how))
        at += n
    return out


def pseudo_labels(scores: list[float], label: float, how: Aggregation) -> list[int]:
    """The most likely 0/1 sentence labels whose aggregate equals the response label.

    Start from the scores thresholded at 0.5 and flip the fewest sentences, those closest to the other side:
    MIN labelled 0 with no sentence below 0.5 → the lowest-scored becomes 0; MIN labelled 1 → all become 1;
    MAX mirrors that; AVG → exactly round(label·n) ones, the highest-scored. For MIN and MAX a label (a proportion
    or 0/1) counts as positive from 0.5 on.
    """
    hard = [int(s >= 0.5) for s in scores]
    n = len(scores)
    if n == 0:
        return []
    if how == "avg":
        k = math.floor(label * n + 0.5)
        top = sorted(range(n), key=lambda i: -scores[i])[:k]
        return [int(i in top) for i in range(n)]
    positive = label >= 0.5
    if how == "min":
        if positive:
            return [1] * n
        if 0 not in hard:
            hard[min(range(n), key=lambda i: scores[i])] = 0
        return hard
    if not positive:
        return [0] * n
    if 1 not in hard:
        hard[max(range(n), key=lambda i: scores[i])] = 1
    return hard
