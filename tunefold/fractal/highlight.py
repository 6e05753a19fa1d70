"""Reading the `sentence_scores` output back: the lowest-scored sentences of an answer, for the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunefold.io import read_jsonl


def lowest_sentences(path: Path, model: str, n: int = 3) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """(question_id, turn) -> the `n` lowest-scored sentences of `model`'s MT-Bench answer, lowest first."""
    out = {}
    for row in read_jsonl(path):
        if row.get("source") == "mt_bench" and row.get("model") == model and row["sentences"]:
            ranked = sorted(row["sentences"], key=lambda s: s["score"])[:n]
            out[(int(row["question_id"]), int(row["turn"]))] = ranked
    return out
