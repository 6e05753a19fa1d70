"""Judged answers as FRACTAL bags: context (question, reference answer), the answer's sentences, its label.

MT-Bench single judgments rate a turn 1-10 (normalised: rating/10; -1 = the judge's reply could not be parsed);
FLASK judgments score 3 skills 1-5 or N/A (normalised: mean of the scored skills/5). An answer without a usable
rating is still split and scored, but not trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefold.config import FractalConfig
from tunefold.errors import InputError
from tunefold.eval.mtbench import Question, load_answers
from tunefold.fractal.split import Span, split_spans
from tunefold.io import read_jsonl

if TYPE_CHECKING:
    from tunefold.fractal.embed import Embedder
    from tunefold.fractal.scorer import BagData


@dataclass
class Response:
    """One judged answer. `key` names it in the outputs (source, question or instance, model, turn)."""

    key: dict[str, Any]
    question: str
    reference: str | None
    answer: str
    judge_score: float | None  # normalised to [0, 1]; None: no usable rating
    spans: list[Span] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.spans = split_spans(self.answer)


def label_of(score: float | None, cfg: FractalConfig) -> float | None:
    """The training label of a normalised judge score: 0/1 at the threshold, or the score itself."""
    if score is None:
        return None
    return score if cfg.labels == "proportion" else float(score >= cfg.label_threshold)


def mt_bench_responses(judgments: Path, answers: Path, questions: list[Question]) -> list[Response]:
    """Every single-answer judgment in `judgments/*_single.jsonl`, with its answer turn and question turn."""
    files = sorted(judgments.glob("*_single.jsonl"))
    if not files:
        raise InputError(f"{judgments}: no *_single.jsonl judgment files; run the mt_bench stage first")
    by_id = {q.question_id: q for q in questions}
    cache: dict[str, dict[int, list[str]]] = {}
    out = []
    for f in files:
        for n, row in enumerate(read_jsonl(f), 1):
            try:
                qid, model, turn, score = int(row["question_id"]), row["model"], int(row["turn"]), row["score"]
            except (KeyError, TypeError, ValueError) as e:
                msg = "not a single-answer judgment (needs question_id, model, turn, score)"
                raise InputError(f"{f}:{n}: {msg}") from e
            if model not in cache:
                path = answers / f"{model}.jsonl"
                if not path.exists():
                    raise InputError(f"{f}:{n}: judged model {model!r} has no answers file {path}")
                cache[model] = load_answers(path)
            q = by_id.get(qid)
            turns = cache[model].get(qid)
            if q is None or turns is None or len(turns) < turn or len(q.turns) < turn:
                raise InputError(
                    f"{f}:{n}: question {qid} turn {turn} of {model!r} is missing from the questions "
                    f"or answers files (judgments from another question set?)"
                )
            ref = q.reference[turn - 1] if q.reference and len(q.reference) >= turn else None
            key = {"source": "mt_bench", "question_id": qid, "model": model, "turn": turn, "judge_rating": score}
            norm = float(score) / 10 if score is not None and score >= 0 else None
            out.append(Response(key, q.turns[turn - 1], ref, turns[turn - 1], norm))
    return out


def flask_responses(judgments: Path, answers: Path) -> list[Response]:
    """Every FLASK judgment in `judgments` (its instances.jsonl gives instruction and reference answer)."""
    instances = {int(r["idx"]): r for r in read_jsonl(judgments / "instances.jsonl")}
    out = []
    for f in sorted(p for p in judgments.glob("*.jsonl") if p.name != "instances.jsonl"):
        rows = read_jsonl(f)
        models = {r["model"] for r in rows}
        texts = {m: {int(a["idx"]): a["answer"] for a in read_jsonl(answers / f"{m}.jsonl")} for m in models}
        for n, row in enumerate(rows, 1):
            idx, model = int(row["idx"]), row["model"]
            if idx not in instances or idx not in texts[model]:
                raise InputError(f"{f}:{n}: FLASK instance {idx} of {model!r} has no instance or answer row")
            scored = [v for v in (row.get("scores") or {}).values() if v is not None]
            norm = sum(scored) / len(scored) / 5 if scored else None
            key = {"source": "flask", "idx": idx, "model": model, "judge_scores": row.get("scores")}
            inst = instances[idx]
            out.append(Response(key, inst["instruction"], inst.get("answer"), texts[model][idx], norm))
    return out


def to_bags(responses: list[Response], embedder: Embedder, cfg: FractalConfig) -> BagData:
    """Embed every sentence and context. Responses without sentences must be filtered out before."""
    import torch

    from tunefold.fractal.scorer import BagData

    sent = embedder.encode([s.text for r in responses for s in r.spans])
    questions = embedder.encode([r.question for r in responses])
    refs = embedder.encode([r.reference or "" for r in responses])
    has_ref = torch.tensor([bool(r.reference) for r in responses], dtype=torch.float32)[:, None]
    contexts = torch.nn.functional.normalize(questions + has_ref * refs, dim=-1)
    sizes = [len(r.spans) for r in responses]
    labels = [label_of(r.judge_score, cfg) for r in responses]
    return BagData.build(list(sent.split(sizes)), contexts, labels)
