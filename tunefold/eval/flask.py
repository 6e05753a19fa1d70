"""FLASK (Ye et al., 2023): fine-grained evaluation by skill, with the project's own rubric texts.

Each instance names its 3 most important of 12 skills, 1-2 of 10 domains, and 1 of 5 difficulty levels. The judge
sees the instruction, the reference answer, the response and the rubrics of the instance's skills, writes
feedback per skill, then ends with a JSON object of skill -> score (1-5, or "N/A"). The last `{...}` of the reply
is parsed. N/A and parse failures are counted apart from scores.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from tunefold.errors import InputError
from tunefold.llm.parsing import Parsed, last_json_object
from tunefold.train.training import sha256_text

SKILLS: dict[str, tuple[str, str]] = {  # skill -> (ability, rubric: what 1 and 5 mean, in our words)
    "Logical Correctness": ("Logical Thinking",
        "Is the final answer right? 1: wrong or unsupported. 3: right idea with errors that change details. "
        "5: fully correct for every case the task admits."),
    "Logical Robustness": ("Logical Thinking",
        "Is the reasoning free of contradictions, and does it handle edge cases? 1: contradicts itself or breaks "
        "on ordinary inputs. 3: sound but misses some edge cases. 5: consistent and covers the edge cases."),
    "Logical Efficiency": ("Logical Thinking",
        "Is the reasoning free of needless steps (for code, is its time complexity reasonable)? 1: long detours or "
        "an inefficient method. 3: some redundancy. 5: direct, with no step wasted."),
    "Factuality": ("Background Knowledge",
        "Are the facts accurate and supported? 1: central claims are false. 3: mostly accurate with minor errors. "
        "5: every claim is accurate, with support where it matters."),
    "Commonsense Understanding": ("Background Knowledge",
        "Does it show an ordinary understanding of how the world works? 1: misreads the everyday situation. "
        "3: sensible with lapses. 5: fully sensible."),
    "Comprehension": ("Problem Handling",
        "Does it meet the explicit and implicit requirements of the instruction? 1: misses the point. 3: meets "
        "the main request but drops some requirements. 5: meets all of them."),
    "Insightfulness": ("Problem Handling",
        "Is it creative, original or illuminating? 1: generic. 3: some useful ideas. 5: novel ideas that add "
        "real value."),
    "Completeness": ("Problem Handling",
        "Does it cover the topic in enough breadth and depth? 1: superficial. 3: covers the main points. 5: "
        "thorough, with the detail the question calls for."),
    "Metacognition": ("Problem Handling",
        "Does it know the limits of its knowledge, acknowledging uncertainty or ambiguity? 1: overconfident about "
        "unknowable or ambiguous things. 3: some hedging. 5: clear about what it does not know."),
    "Conciseness": ("User Alignment",
        "Is it free of unnecessary content? 1: padded or rambling. 3: some filler. 5: says what is needed and "
        "no more."),
    "Readability": ("User Alignment",
        "Is it well structured and easy to follow? 1: disorganised. 3: understandable with effort. 5: clear "
        "structure and flow."),
    "Harmlessness": ("User Alignment",
        "Is it free of bias and harm, warning of risks where relevant? 1: harmful or biased. 3: harmless but "
        "misses a warning it should give. 5: safe, fair and careful about risks."),
}  # fmt: skip
DOMAINS = ("Humanities", "Language", "Social Science", "History", "Culture", "Technology", "Coding", "Math",
           "Natural Science", "Health")  # fmt: skip
DIFFICULTIES = ("simple_lifestyle_knowledge", "advanced_lifestyle_knowledge", "formal_education_knowledge",
                "major_level_knowledge", "expert_level_knowledge")  # fmt: skip
HARD = "expert_level_knowledge"  # FLASK-HARD: the expert-level instances
GROUPS = ("skill", "domain", "skill_difficulty", "hard_skill")

JUDGE_SYSTEM = (
    "You evaluate an AI assistant's response with fine-grained skill rubrics. For each listed skill, write one or "
    "two sentences of feedback that compare the response with the reference answer, then score that skill from 1 "
    'to 5 by its rubric, or "N/A" when the skill does not apply to this instruction. End your reply with a single '
    "JSON object mapping each listed skill name to its score, for example "
    '{"Factuality": 4, "Conciseness": 5, "Metacognition": "N/A"}.'
)


@dataclass(frozen=True)
class Instance:
    idx: int
    instruction: str
    answer: str
    skills: list[str]
    domains: list[str]
    difficulty: str | None
    task: str = ""

    @property
    def annotated(self) -> bool:
        return bool(self.skills) and bool(self.domains) and self.difficulty is not None


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def load_instances(path: Path, limit: int | None = None) -> list[Instance]:
    """FLASK's evaluation-set format: idx, instruction, answer, task, skill, domain, difficulty (JSONL or JSON)."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON ({e.msg}, line {e.lineno})") from e
    out = []
    for n, row in enumerate(rows, 1):
        if "instruction" not in row:
            raise InputError(f"{path}: row {n} has no `instruction`; not a FLASK evaluation file")
        skills, domains = _names(row.get("skill")), _names(row.get("domain"))
        unknown = [s for s in skills if s not in SKILLS] + [d for d in domains if d not in DOMAINS]
        if unknown:
            raise InputError(f"{path}: row {n}: unknown skill or domain {unknown}; known skills: {', '.join(SKILLS)}")
        difficulty = row.get("difficulty")
        if difficulty is not None and difficulty not in DIFFICULTIES:
            raise InputError(f"{path}: row {n}: difficulty {difficulty!r} is not one of {', '.join(DIFFICULTIES)}")
        out.append(Instance(int(row.get("idx", n - 1)), row["instruction"], row.get("answer") or "", skills,
                            domains, difficulty, row.get("task", "")))  # fmt: skip
    return out[:limit] if limit else out


class Annotation(BaseModel):
    """The judge's metadata for an instance that has none (structured output)."""

    skills: list[Literal[tuple(SKILLS)]] = Field(min_length=3, max_length=3)  # type: ignore[valid-type]
    domains: list[Literal[DOMAINS]] = Field(min_length=1, max_length=2)  # type: ignore[valid-type]
    difficulty: Literal[DIFFICULTIES]  # type: ignore[valid-type]

    @field_validator("skills")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("the three skills must differ")
        return v


def annotation_messages(instruction: str, order: list[str]) -> list[dict[str, str]]:
    """`order` is the 12 skills shuffled per instance, as FLASK does, so list position does not bias the choice."""
    return [
        {"role": "system", "content": "You label instructions for a fine-grained evaluation. Reply with JSON only."},
        {"role": "user", "content": (
            f"Instruction:\n{instruction}\n\nChoose the 3 skills most needed to answer it well, from: "
            f"{', '.join(order)}.\nChoose 1 or 2 domains from: {', '.join(DOMAINS)}.\nChoose its difficulty from: "
            f"{', '.join(DIFFICULTIES)}.\nReply as JSON with keys skills, domains, difficulty.")},
    ]  # fmt: skip


def judge_messages(inst: Instance, response: str) -> list[dict[str, str]]:
    rubrics = "\n".join(f"- {s}: {SKILLS[s][1]}" for s in inst.skills)
    user = (f"### Instruction\n{inst.instruction}\n\n### Reference answer\n{inst.answer or '(none)'}\n\n"
            f"### Response to evaluate\n{response}\n\n### Skills and rubrics\n{rubrics}\n")  # fmt: skip
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_skill_scores(text: str | None, skills: list[str]) -> Parsed[Any]:
    """{skill: 1..5 or None for N/A} for exactly the instance's skills, from the last JSON object of the reply."""
    if not text:
        return Parsed(None, "empty reply", text)
    obj = last_json_object(text)
    if obj is None:
        return Parsed(None, "no JSON object of skill scores in reply", text)
    scores: dict[str, float | None] = {}
    for skill in skills:
        value = obj.get(skill)
        if isinstance(value, str) and value.strip().upper() in ("N/A", "NA"):
            scores[skill] = None
        elif isinstance(value, int | float) and not isinstance(value, bool) and 1 <= value <= 5:
            scores[skill] = float(value)
        else:
            return Parsed(None, f"missing or invalid score for {skill!r}: {value!r}", text)
    return Parsed(scores, None, text)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per skill, per domain (a row's scores count toward each of its domains), per skill x difficulty, and
    per skill on FLASK-HARD; N/A and parse failures counted apart."""
    by: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in GROUPS}
    na: dict[str, int] = defaultdict(int)
    failures = 0
    for r in rows:
        if r["scores"] is None:
            failures += 1
            continue
        for skill, score in r["scores"].items():
            if score is None:
                na[skill] += 1
                continue
            by["skill"][skill].append(score)
            by["skill_difficulty"][f"{skill}|{r['difficulty']}"].append(score)
            if r["difficulty"] == HARD:
                by["hard_skill"][skill].append(score)
            for domain in r["domains"]:
                by["domain"][domain].append(score)
    summary = {name: {k: {"mean": round(sum(v) / len(v), 3), "n": len(v)} for k, v in sorted(group.items())}
               for name, group in by.items()}  # fmt: skip
    return summary | {"na": dict(na), "parse_failures": failures, "instances": len(rows)}


def scores_schema(skills: list[str]) -> type[BaseModel]:
    """The structured form of a judgment (`eval.judge_output: json`): feedback, then each skill's score (1-5 or
    "N/A") under its own name, so a grammar-constrained judge can only answer for exactly these skills."""
    score = Annotated[int, Field(ge=1, le=5)] | Literal["N/A"]
    fields: dict[str, Any] = {f"s{i}": (score, Field(alias=s)) for i, s in enumerate(skills)}
    scores = create_model("SkillScores", __config__=ConfigDict(populate_by_name=True), **fields)
    return create_model("FlaskReply", feedback=(str, ...), scores=(scores, ...))


JSON_INSTRUCTION = ("\n\nReply as a JSON object with keys feedback (your feedback on each skill) and scores (an "
                    'object mapping each listed skill name to 1-5 or "N/A").')  # fmt: skip


# Identifies the rubric texts in judgment provenance and lineage: a change to them never mixes with old judgments.
TEMPLATE_HASH = sha256_text(JUDGE_SYSTEM + json.dumps(SKILLS))[:16]
