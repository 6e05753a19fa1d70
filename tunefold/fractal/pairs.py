"""Sentence scores as training signal: DPO pairs that prefer an answer stopped before it goes wrong.

For each record, the final answer is scored sentence by sentence; if a sentence after the first scores below
`fractal.low_score`, chosen = the answer cut just before it (its earlier text kept byte for byte), rejected = the
original answer. Records already carrying a `rejected` answer, and answers whose first sentence is already low
(nothing left to keep), give no pair.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunefold.config import FractalConfig
from tunefold.data.records import Message, Record, make_record
from tunefold.fractal.bags import Response, to_bags
from tunefold.fractal.split import Span

if TYPE_CHECKING:
    from tunefold.fractal.embed import Embedder
    from tunefold.fractal.scorer import Scorer


def truncated_pair(record: Record, spans: list[Span], scores: list[float], low: float) -> Record | None:
    """The preference record for one scored answer, or None when no sentence after the first is low."""
    first = next((i for i, s in enumerate(scores) if s < low), None)
    if not first:
        return None
    chosen = record.response[: spans[first].start].rstrip()
    meta = record.metadata | {
        "parent_id": record.metadata.get("parent_id", record.id),
        "fractal": {
            "kept_sentences": first,
            "dropped_sentences": len(spans) - first,
            "first_low_score": round(scores[first], 4),
        },
    }
    return make_record(
        [*record.prompt, Message(role="assistant", content=chosen)],
        record.source,
        rejected=record.response,
        metadata=meta,
    )


def preference_pairs(
    records: list[Record], scorer: Scorer, embedder: Embedder, cfg: FractalConfig
) -> tuple[list[Record], dict[str, Any]]:
    """Score the final answer of every record (context: the last user turn) and cut where it turns low."""
    candidates = [r for r in records if r.rejected is None]
    responses = [Response({"id": r.id}, r.instruction, None, r.response, None) for r in candidates]
    scorable = [(rec, resp) for rec, resp in zip(candidates, responses, strict=True) if resp.spans]
    pairs: list[Record] = []
    if scorable:
        scores = scorer.predict(to_bags([resp for _, resp in scorable], embedder, cfg)).tolist()
        at = 0
        for rec, resp in scorable:
            n = len(resp.spans)
            pair = truncated_pair(rec, resp.spans, scores[at : at + n], cfg.low_score)
            at += n
            if pair is not None:
                pairs.append(pair)
    stats = {
        "records": len(records),
        "already_pairs": len(records) - len(candidates),
        "scored": len(scorable),
        "pairs": len(pairs),
    }
    return pairs, stats
