"""MT-Bench: the official file formats (FastChat's llm_judge), judge-prompt selection and score aggregation.

Questions: `{question_id, category, turns: [t1, t2], reference?}`. Answers and references:
`{question_id, answer_id, model_id, choices: [{index, turns}], tstamp}`. Judgments follow FastChat's
`model_judgment/<judge>_single.jsonl` and `<judge>_pair.jsonl` rows. A rating that cannot be parsed is stored as
-1 (FastChat's convention) and counted as a failure; it never enters a mean.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tunefold.errors import InputError
from tunefold.eval.uncertainty import question_interval
from tunefold.io import read_appended, read_jsonl

# Per-category sampling temperature of MT-Bench's answer generation.
TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
NEED_REFERENCE = ("math", "reasoning", "coding")
OWN_PROMPTS = {  # (type, with reference, multi-turn) -> template name in tunefold/templates/judge_prompts.jsonl
    ("single", False, False): "tunefold-single",
    ("single", True, False): "tunefold-single-ref",
    ("single", False, True): "tunefold-single-multi-turn",
    ("single", True, True): "tunefold-single-ref-multi-turn",
    ("pairwise", False, False): "tunefold-pair",
    ("pairwise", True, False): "tunefold-pair-ref",
    ("pairwise", False, True): "tunefold-pair-multi-turn",
    ("pairwise", True, True): "tunefold-pair-ref-multi-turn",
}
FASTCHAT_PROMPTS = {
    ("single", False, False): "single-v1",
    ("single", True, False): "single-math-v1",
    ("single", False, True): "single-v1-multi-turn",
    ("single", True, True): "single-math-v1-multi-turn",
    ("pairwise", False, False): "pair-v2",
    ("pairwise", True, False): "pair-math-v1",
    ("pairwise", False, True): "pair-v2-multi-turn",
    ("pairwise", True, True): "pair-math-v1-multi-turn",
}


class RatingReply(BaseModel):
    """The structured form of a single-answer judgment (`eval.judge_output: json`)."""

    explanation: str
    rating: int = Field(ge=1, le=10)


class VerdictReply(BaseModel):
    """The structured form of a pairwise judgment; C is a tie."""

    explanation: str
    verdict: Literal["A", "B", "C"]


JSON_INSTRUCTION = {
    "single": "\n\nReply as a JSON object with keys explanation (a short justification) and rating (1-10).",
    "pairwise": "\n\nReply as a JSON object with keys explanation (a short comparison) and verdict "
    '("A", "B", or "C" for a tie).',
}


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    turns: list[str]
    reference: list[str] | None = None


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    type: str
    system_prompt: str
    prompt_template: str
    output_format: str


def load_questions(path: Path, references: Path | None = None, ids: list[int] | None = None) -> list[Question]:
    """Questions in FastChat's format, with reference answers (answer-row format) attached by question_id.

    References come only from the reference file, as in FastChat: a question file's own `reference` field is a
    note, not what the judge is shown (`require_references` checks that judging has what it needs).
    """
    refs: dict[int, list[str]] = {}
    if references is not None:
        for row in read_jsonl(references):
            refs[int(row["question_id"])] = list(row["choices"][0]["turns"])
    questions = []
    for n, row in enumerate(read_jsonl(path), 1):
        missing = [k for k in ("question_id", "category", "turns") if k not in row]
        if missing or not isinstance(row.get("turns"), list) or not row["turns"]:
            raise InputError(f"{path}:{n}: not an MT-Bench question (needs question_id, category, turns)")
        qid = int(row["question_id"])
        if ids and qid not in ids:
            continue
        questions.append(Question(qid, row["category"], list(row["turns"]), refs.get(qid)))
    if not questions:
        raise InputError(f"{path}: no questions" + (f" with ids {ids}" if ids else ""))
    return questions


def require_references(questions: list[Question], references: Path | None) -> None:
    """Math, reasoning and coding are judged against a reference answer; FastChat refuses to judge them without
    one, and so do we (judging them with the plain prompt would silently change the protocol)."""
    unreferenced = [q.question_id for q in questions if q.category in NEED_REFERENCE and q.reference is None]
    if unreferenced:
        source = f"reference file {references}" if references else "no reference file (eval.mt_bench.references)"
        raise InputError(
            f"{len(unreferenced)} {'/'.join(NEED_REFERENCE)} question(s) have no reference answer in {source}: "
            f"question ids {unreferenced[:20]}; MT-Bench judges these against a reference"
        )


def load_judge_prompts(path: Path | None) -> dict[tuple[str, bool, bool], JudgePrompt]:
    """The project's own judge prompts, or FastChat's `judge_prompts.jsonl` (same fields and placeholders)."""
    if path is None:
        text = resources.files("tunefold.templates").joinpath("judge_prompts.jsonl").read_text(encoding="utf-8")
        rows, names = [json.loads(line) for line in text.splitlines() if line.strip()], OWN_PROMPTS
    else:
        rows, names = read_jsonl(path), FASTCHAT_PROMPTS
    by_name = {r["name"]: r for r in rows}
    missing = sorted(set(names.values()) - set(by_name))
    if missing:
        raise InputError(f"{path or 'tunefold judge prompts'}: missing prompt(s) {', '.join(missing)}")
    fields = ("name", "type", "system_prompt", "prompt_template", "output_format")
    return {key: JudgePrompt(**{f: by_name[name][f] for f in fields}) for key, name in names.items()}


def answer_row(question_id: int, model_id: str, turns: list[str], tstamp: float) -> dict[str, Any]:
    return {
        "question_id": question_id,
        "answer_id": f"{model_id}-{question_id}",
        "model_id": model_id,
        "choices": [{"index": 0, "turns": turns}],
        "tstamp": tstamp,
    }


def load_answers(path: Path) -> dict[int, list[str]]:
    """question_id -> answer turns, from a model_answer file (possibly still being appended to)."""
    return {int(row["question_id"]): list(row["choices"][0]["turns"]) for row in read_appended(path)}


def judged_turns(q: Question) -> tuple[int, ...]:
    """The turns MT-Bench judges: the first, and the second when the question has one (Vicuna-style files do not)."""
    return (1, 2) if len(q.turns) > 1 else (1,)


def single_messages(p: JudgePrompt, q: Question, answers: list[str], turn: int) -> list[dict[str, str]]:
    """Judge messages for one turn (1-based); turn 2 shows the whole conversation."""
    ref = [*(q.reference or []), "", ""]
    if turn == 1:
        user = p.prompt_template.format(question=q.turns[0], answer=answers[0], ref_answer_1=ref[0])
    else:
        user = p.prompt_template.format(
            question_1=q.turns[0],
            answer_1=answers[0],
            question_2=q.turns[1],
            answer_2=answers[1],
            ref_answer_1=ref[0],
            ref_answer_2=ref[1],
        )
    return [{"role": "system", "content": p.system_prompt}, {"role": "user", "content": user}]


def pair_messages(p: JudgePrompt, q: Question, a: list[str], b: list[str], turn: int) -> list[dict[str, str]]:
    ref = [*(q.reference or []), "", ""]
    if turn == 1:
        user = p.prompt_template.format(question=q.turns[0], answer_a=a[0], answer_b=b[0], ref_answer_1=ref[0])
    else:
        user = p.prompt_template.format(
            question_1=q.turns[0],
            question_2=q.turns[1],
            answer_a_1=a[0],
            answer_a_2=a[1],
            answer_b_1=b[0],
            answer_b_2=b[1],
            ref_answer_1=ref[0],
            ref_answer_2=ref[1],
        )
    return [{"role": "system", "content": p.system_prompt}, {"role": "user", "content": user}]


def prompt_for(prompts: dict[tuple[str, bool, bool], JudgePrompt], kind: str, q: Question, turn: int) -> JudgePrompt:
    with_ref = q.category in NEED_REFERENCE and q.reference is not None
    return prompts[(kind, with_ref, turn == 2)]


def combine_orders(g1: str | None, g2: str | None) -> str:
    """FastChat's rule for the two orders: a win only when both agree; disagreement or any tie is a tie.

    g1 is the verdict with the candidate shown as A, g2 with it shown as B, both already mapped to
    'model_1' / 'model_2' / 'tie' / None (parse failure).
    """
    if g1 is None or g2 is None:
        return "error"
    return g1 if g1 == g2 else "tie"


def aggregate_single(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean rating overall, per turn and per category, as FastChat's show_result computes it (score -1 left out),
    with a 95% bootstrap interval over questions; each failure kind (`judge_status`) counted apart, never
    averaged."""
    scores: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    failures: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        keys = ("overall", f"turn_{r['turn']}", f"category/{r['category']}")
        for k in keys:
            if r["score"] < 0:
                failures[k][r.get("judge_status") or "unparseable"] += 1
            else:
                scores[k][r["question_id"]].append(float(r["score"]))
    out: dict[str, Any] = {}
    for k in sorted(set(scores) | set(failures)):
        vals = [x for v in scores[k].values() for x in v]
        interval = question_interval(scores[k])
        out[k] = {
            "mean": round(sum(vals) / len(vals), 3) if vals else None,
            "interval": list(interval) if interval else None,
            "judged": len(vals),
            "failures": sum(failures[k].values()),
            "failure_kinds": dict(sorted(failures[k].items())),
        }
    return out


def aggregate_pairs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Win / tie / loss of model_1 against model_2 with FastChat's two rates, errors apart.

    `win_rate` = W / (W + T + L) and `win_rate_adjusted` = (W + T/2) / (W + T + L), as show_result.py names them.
    """
    counts = {"win": 0, "tie": 0, "loss": 0, "error": 0}
    for r in rows:
        counts[{"model_1": "win", "model_2": "loss", "tie": "tie"}.get(r["result"], "error")] += 1
    decided = counts["win"] + counts["tie"] + counts["loss"]

    def rate(x: float) -> float | None:
        return round(x / decided, 4) if decided else None

    return counts | {"win_rate": rate(counts["win"]), "win_rate_adjusted": rate(counts["win"] + 0.5 * counts["tie"])}
