"""AUC-ROC, the paper's sentence-level measure: how often a good sentence outscores a bad one."""

from __future__ import annotations

from collections.abc import Sequence


def auc_roc(truth: Sequence[int], scores: Sequence[float]) -> float:
    """Mann-Whitney form: P(score of a random positive > score of a random negative), ties counting one half.

    Ranks with ties averaged; O(n log n). Needs at least one positive and one negative."""
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} labels but {len(scores)} scores")
    pos = sum(1 for t in truth if t)
    neg = len(truth) - pos
    if not pos or not neg:
        raise ValueError("AUC needs both positive and negative labels")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        rank_sum += mean_rank * sum(1 for k in order[i : j + 1] if truth[k])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
