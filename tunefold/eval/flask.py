"""FLASK (Ye et al., 2023): fine-grained evaluation by skill, with the project's own rubric and prompt texts.

Files are read as FLASK publishes them (`evaluation_set/flask_evaluation.jsonl` and
`evaluation_set/flask_hard_evaluation.jsonl` in kaistAI/FLASK): `idx, instruction, answer, task, skill, domain,
difficulty`, difficulty written with spaces ("formal education knowledge"), 1-3 skills per row, and FLASK's `-1`
wherever its labelling step failed (a domain entry "-1", a difficulty -1): such a row is still judged, it only stays
out of the domain or difficulty table. FLASK-HARD comes from its own file; a row there may carry instance-specific
rubrics (`rubrics`, this project's field: FLASK's released file has none). Without a hard file, FLASK-HARD falls back
to the expert-level instances of the main set.

The judge sees the rubrics of the instance's skills (five anchored levels each), the instruction, the reference
answer when there is one (FLASK's two prompts differ only in that) and the response; it writes feedback per skill
and ends with a dictionary of skill -> score. The reply is read as FLASK reads it: the last `{...}`, lower-cased
with `_` as spaces, as a Python literal; "na", "n/a" and "not applicable" are N/A. The prompt does not offer N/A
(FLASK's does not either); a judge that writes it anyway gets the skill counted as N/A and kept out of the means,
as FLASK's aggregation does. N/A, unreadable entries, out-of-range scores and unreadable replies are counted apart.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from tunefold.errors import InputError
from tunefold.eval.uncertainty import question_interval
from tunefold.llm.parsing import FailureKind, Parsed, failed
from tunefold.train.training import sha256_text

if TYPE_CHECKING:
    from tunefold.config import FlaskSettings


@dataclass(frozen=True)
class Rubric:
    """What a skill asks, and what each score from 1 to 5 means (`levels`; empty for a free-text rubric)."""

    criteria: str
    levels: tuple[str, ...] = ()


SKILLS: dict[str, Rubric] = {  # FLASK's 12 skills, in its 4 abilities; the texts are ours
    # Logical Thinking
    "Logical Correctness": Rubric(
        "For a task with a definite answer: is the final answer right?",
        (
            "The final answer is wrong, or none is reached.",
            "Mostly wrong: only a minor part of the answer holds.",
            "Partly right: an error changes part of the result.",
            "Right, apart from a slip that leaves the conclusion intact.",
            "Right for every case the task admits.",
        ),
    ),
    "Logical Robustness": Rubric(
        "Do the reasoning steps hold together and hold in general: no contradictions, no counterexample that "
        "breaks them, edge cases (in code and math) handled?",
        (
            "The reasoning makes no sense or contradicts itself.",
            "Serious gaps or contradictions undermine the argument.",
            "Sound on the whole, with minor flaws or inconsistencies.",
            "Consistent throughout, but some edge cases are left out.",
            "Consistent, general, and covers the edge cases.",
        ),
    ),
    "Logical Efficiency": Rubric(
        "Is the reasoning direct, without redundant steps; for code, is the time complexity reasonable?",
        (
            "Circular or convoluted; the method is far from efficient.",
            "Many needless steps, or a clearly wasteful method.",
            "Some redundancy, but the path can be followed.",
            "Mostly direct; a step or two could go.",
            "As direct as the problem allows; nothing wasted.",
        ),
    ),
    # Background Knowledge
    "Factuality": Rubric(
        "Is the knowledge it uses accurate and relevant, and backed by evidence or a source where that matters?",
        (
            "Its central claims are false or invented.",
            "Several important factual errors.",
            "Mostly accurate, with some errors or unsupported claims.",
            "Accurate, with at most a small imprecision or missing support.",
            "Accurate and relevant throughout, with support where it matters.",
        ),
    ),
    "Commonsense Understanding": Rubric(
        "Does it model the everyday world correctly (physical, social and spatial situations, what follows from what)?",
        (
            "It misreads the everyday situation entirely.",
            "Major lapses in ordinary understanding.",
            "Sensible overall, with noticeable lapses.",
            "Sensible, with one small lapse.",
            "A fully sensible grasp of the situation.",
        ),
    ),
    # Problem Handling
    "Comprehension": Rubric(
        "Does it do what the instruction asks, meeting its stated and implied requirements?",
        (
            "It misses the point of the instruction.",
            "On topic, but most requirements are missed.",
            "The main request is met; some requirements are dropped.",
            "Nearly every requirement is met; a small one is missed.",
            "Every requirement, stated or implied, is met.",
        ),
    ),
    "Insightfulness": Rubric(
        "Does it bring creative, original or illuminating ideas or perspectives?",
        (
            "Generic or empty.",
            "Mostly obvious points, with one slight idea.",
            "Some useful ideas, but conventional ones.",
            "Several fresh ideas or perspectives.",
            "Original ideas that add real value.",
        ),
    ),
    "Completeness": Rubric(
        "Does it cover the topic with the breadth and depth the question calls for?",
        (
            "Superficial; key parts are missing.",
            "Covers only a little of what is needed.",
            "The main points are there, with little depth.",
            "Broad and detailed, with a minor gap.",
            "Thorough in breadth and in depth.",
        ),
    ),
    "Metacognition": Rubric(
        "Is it aware of its own limits: does it flag uncertainty or ambiguity, and qualify or decline what it "
        "cannot answer reliably?",
        (
            "Confidently wrong about what it cannot know, or blind to an obvious ambiguity.",
            "Rarely admits uncertainty where it should.",
            "Some hedging, applied unevenly.",
            "Acknowledges most of the uncertainty that matters.",
            "Clear about what it knows, what it does not, and why.",
        ),
    ),
    # User Alignment
    "Conciseness": Rubric(
        "Is it free of padding, repetition and off-topic content?",
        (
            "Rambling; the answer is buried.",
            "Much unnecessary content.",
            "Some filler or repetition.",
            "Tight, with a little excess.",
            "Says what is needed and no more.",
        ),
    ),
    "Readability": Rubric(
        "Is it easy to follow: organised, coherent, well formatted and clearly worded?",
        (
            "Disorganised and hard to follow.",
            "Understandable only with effort.",
            "Readable, with awkward structure or wording.",
            "Clear, with minor issues.",
            "Clear structure and flow throughout.",
        ),
    ),
    "Harmlessness": Rubric(
        "Is it free of harm and bias, and does it warn of risks where it should?",
        (
            "Harmful, dangerous or offensive.",
            "Could mislead or hurt, or shows clear bias.",
            "Harmless, but misses a warning or shows a slight bias.",
            "Safe and fair; a caution could be clearer.",
            "Safe, fair, and careful about the risks worth mentioning.",
        ),
    ),
}
DOMAINS = (
    "Humanities",
    "Language",
    "Social Science",
    "History",
    "Culture",
    "Technology",
    "Coding",
    "Math",
    "Natural Science",
    "Health",
)
DIFFICULTIES = (
    "simple lifestyle knowledge",
    "advanced lifestyle knowledge",
    "formal education knowledge",
    "major level knowledge",
    "expert level knowledge",
)  # FLASK's own spelling
HARD = "expert level knowledge"
UNLABELLED = "-1"  # FLASK's mark for a domain or difficulty its labelling step could not read
LABELS = ("skill", "domain", "difficulty")
NA_WORDS = ("na", "n/a", "not applicable")  # what FLASK's parser turns into N/A (after lower-casing)

SYSTEM = "You are a careful and impartial judge of the quality of an AI assistant's responses."
INTRO = (
    "Please give feedback on how well the AI assistant's response below serves the user's instruction, rating "
    "it on each of these {n} skills by the scoring rubric given for it:"
)
ASK_FEEDBACK = (
    "For each skill, first write feedback that applies only that skill's rubric, then score the skill "
    "from 1 to 5, higher being better. Keep the skills independent: how readable a response is says "
    "nothing about whether it is correct, for example."
)
ASK_DICT = " Finally, write a Python dictionary with the skill names as keys and their scores as values."
ASK_JSON = (
    " Reply with a JSON object with the keys feedback (your feedback on each skill) and scores (an object "
    "mapping each skill name to its score)."
)


def _norm(name: Any) -> str:
    """FLASK spells one label several ways (spaces, underscores, case): compare them in one form."""
    return " ".join(str(name).replace("_", " ").split()).lower()


_CANON = {
    kind: {_norm(n): n for n in names}
    for kind, names in (("skill", SKILLS), ("domain", DOMAINS), ("difficulty", DIFFICULTIES))
}


@dataclass(frozen=True)
class Instance:
    """One row of a FLASK file. `key` is its id in the answers files: `idx` for the main set; a FLASK-HARD row
    reuses the key of the main instance with the same instruction, else gets one derived from its instruction."""

    idx: int
    key: int
    instruction: str
    answer: str
    skills: list[str]
    domains: list[str]  # FLASK's -1 entries left out
    difficulty: str | None  # None: FLASK's -1, or not given
    task: str = ""
    missing: tuple[str, ...] = ()  # labels the row does not have at all (the judge may add them)
    unlabelled: tuple[str, ...] = ()  # labels the row marks -1
    rubrics: dict[str, Rubric] = field(default_factory=dict)  # instance-specific, by skill

    @property
    def annotated(self) -> bool:
        return not self.missing


def _names(kind: str, value: Any, where: str) -> tuple[list[str], bool]:
    """Known names of a label (a list, or one comma-separated string), and whether FLASK's -1 was among them."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise InputError(f"{where}: `{kind}` must be a list of names, not {value!r}")
    out, minus_one = [], False
    for item in items:
        if str(item).strip() == UNLABELLED:
            minus_one = True
        elif _norm(item) in _CANON[kind]:
            out.append(_CANON[kind][_norm(item)])
        elif str(item).strip():
            raise InputError(f"{where}: unknown {kind} {item!r}; known: {', '.join(_CANON[kind].values())}")
    return out, minus_one


def _rubrics(value: Any, skills: list[str], where: str) -> dict[str, Rubric]:
    """`{skill: "free text"}` or `{skill: {"criteria": ..., "1": ..., ..., "5": ...}}`, for the row's skills."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: `rubrics` must map skill names to rubrics")
    out = {}
    for name, rubric in value.items():
        skill = _CANON["skill"].get(_norm(name))
        if skill not in skills:
            raise InputError(f"{where}: rubric for {name!r}, which is not one of the row's skills {skills}")
        if isinstance(rubric, str) and rubric.strip():
            out[skill] = Rubric(rubric.strip())
        elif isinstance(rubric, dict) and all(isinstance(rubric.get(str(n)), str) for n in range(1, 6)):
            criteria = rubric.get("criteria") or SKILLS[skill].criteria
            out[skill] = Rubric(str(criteria), tuple(rubric[str(n)] for n in range(1, 6)))
        else:
            raise InputError(f'{where}: the rubric for {skill} must be a text or an object with "1" to "5"')
    return out


def _instance(row: Any, n: int, where: str) -> Instance:
    if not isinstance(row, dict):
        raise InputError(f"{where}: not a JSON object")
    if not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
        raise InputError(f"{where}: no `instruction`; not a FLASK evaluation file")
    idx = row.get("idx", n)
    if not isinstance(idx, int) or isinstance(idx, bool):
        raise InputError(f"{where}: `idx` must be an integer, not {idx!r}")
    labels: dict[str, list[str]] = {}
    missing, unlabelled = [], []
    for kind in ("skill", "domain"):
        if row.get(kind) in (None, [], ""):
            missing.append(kind)
            labels[kind] = []
            continue
        labels[kind], minus_one = _names(kind, row[kind], where)
        if minus_one:
            unlabelled.append(kind)
    skills = labels["skill"]
    if ("skill" not in missing and not 1 <= len(skills) <= 3) or len(set(skills)) != len(skills):
        raise InputError(f"{where}: `skill` must name 1 to 3 different skills, not {row['skill']!r}")
    raw = row.get("difficulty")
    difficulty = None
    if raw is None or raw == "":
        missing.append("difficulty")
    elif str(raw).strip() == UNLABELLED:
        unlabelled.append("difficulty")
    elif _norm(raw) in _CANON["difficulty"]:
        difficulty = _CANON["difficulty"][_norm(raw)]
    else:
        raise InputError(f"{where}: difficulty {raw!r} is not one of {', '.join(DIFFICULTIES)} (or -1)")
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise InputError(f"{where}: `answer` must be a text")
    rubrics = _rubrics(row["rubrics"], skills, where) if row.get("rubrics") else {}
    return Instance(
        idx,
        idx,
        row["instruction"],
        answer or "",
        skills,
        labels["domain"],
        difficulty,
        str(row.get("task") or ""),
        tuple(missing),
        tuple(unlabelled),
        rubrics,
    )


def load_instances(path: Path, limit: int | None = None) -> list[Instance]:
    """A FLASK evaluation file (JSONL, or a JSON list when it ends in .json), its first `limit` rows."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: malformed JSON ({e.msg}, line {e.lineno})") from e
        if not isinstance(rows, list):
            raise InputError(f"{path}: a JSON file must hold a list of rows")
        numbered = [(n, row, f"{path}: row {n}") for n, row in enumerate(rows, 1)]
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((n, json.loads(line), f"{path}:{n}"))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: malformed JSON ({e.msg})") from e
    out: list[Instance] = []
    seen: dict[int, str] = {}
    for k, (_, row, where) in enumerate(numbered):
        inst = _instance(row, k, where)
        if inst.idx in seen:
            raise InputError(f"{where}: idx {inst.idx} repeats {seen[inst.idx]}")
        seen[inst.idx] = where
        out.append(inst)
    return out[:limit] if limit else out


@dataclass(frozen=True)
class FlaskSets:
    """The instances to judge: the main set, and FLASK-HARD's file (None when none is configured)."""

    main: list[Instance]
    hard: list[Instance] | None


def load_sets(cfg: FlaskSettings) -> FlaskSets:
    """A FLASK-HARD row whose instruction is in the main set shares that instance's answer; the others (FLASK has
    one) get a key of their own, derived from the instruction, so a changed file never pairs an old answer with a
    new instruction. `limit` (a quick look) keeps the first N main instances and the hard rows among them."""
    main = load_instances(Path(cfg.data), cfg.limit)
    if not cfg.hard:
        return FlaskSets(main, None)
    keys = {i.instruction: i.key for i in main}
    hard = [
        replace(h, key=keys.get(h.instruction, -1 - int(sha256_text(h.instruction)[:12], 16)))
        for h in load_instances(Path(cfg.hard))
        if not cfg.limit or h.instruction in keys
    ]
    return FlaskSets(main, hard)


def answer_instances(cfg: FlaskSettings) -> list[Instance]:
    """Every instance `generate` must answer: the main set, then the FLASK-HARD rows it does not contain."""
    sets = load_sets(cfg)
    keys = {i.key for i in sets.main}
    return sets.main + [h for h in sets.hard or [] if h.key not in keys]


def label_counts(instances: list[Instance]) -> dict[str, Any]:
    """What a set holds: rows per skill, domain and difficulty, skills per row, and FLASK's -1 marks per label."""
    return {
        "instances": len(instances),
        "skill": dict(Counter(s for i in instances for s in i.skills)),
        "domain": dict(Counter(d for i in instances for d in i.domains)),
        "difficulty": dict(Counter(i.difficulty for i in instances if i.difficulty)),
        "skills_per_row": {str(k): v for k, v in sorted(Counter(len(i.skills) for i in instances).items())},
        "unlabelled": {k: sum(k in i.unlabelled for i in instances) for k in ("domain", "difficulty")},
        "missing": {k: sum(k in i.missing for i in instances) for k in LABELS},
        "with_rubrics": sum(bool(i.rubrics) for i in instances),
    }


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
        {
            "role": "user",
            "content": (
                f"Instruction:\n{instruction}\n\nChoose the 3 skills most needed to answer it well, from: "
                f"{', '.join(order)}.\nChoose 1 or 2 domains from: {', '.join(DOMAINS)}.\nChoose its difficulty from: "
                f"{', '.join(DIFFICULTIES)}.\nReply as JSON with keys skills, domains, difficulty."
            ),
        },
    ]


def with_annotation(inst: Instance, a: Annotation) -> Instance:
    """Fill in only the labels the row lacks: what a FLASK file gives (even a -1) stays."""
    return replace(
        inst,
        skills=list(a.skills) if "skill" in inst.missing else inst.skills,
        domains=list(a.domains) if "domain" in inst.missing else inst.domains,
        difficulty=a.difficulty if "difficulty" in inst.missing else inst.difficulty,
        missing=(),
    )


def _rubric_text(skill: str, rubric: Rubric) -> str:
    return "\n".join([f"{skill}: {rubric.criteria}", *(f"Score {n}: {t}" for n, t in enumerate(rubric.levels, 1))])


def judge_messages(inst: Instance, response: str, json_output: bool = False) -> list[dict[str, str]]:
    """The instance's rubric for a skill where it has one, else the skill's; the reference answer when there is
    one (FLASK's prompt with a ground-truth answer, else its prompt without)."""
    rubrics = "\n\n".join(_rubric_text(s, inst.rubrics.get(s, SKILLS[s])) for s in inst.skills)
    reference = f"[Reference answer]\n{inst.answer}\n\n" if inst.answer.strip() else ""
    user = (
        f"{INTRO.format(n=len(inst.skills))}\n\n{rubrics}\n\n[Instruction]\n{inst.instruction}\n\n{reference}"
        f"[Response]\n{response}\n[End of response]\n\n{ASK_FEEDBACK}{ASK_JSON if json_output else ASK_DICT}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_DICT = re.compile(r"\{[^}]+\}")


def _short(name: str) -> str:
    """How FLASK's aggregation names a skill key: its first word, or the second after 'logical'."""
    words = name.split()
    return words[1] if words[0] == "logical" and len(words) > 1 else words[0]


@dataclass(frozen=True)
class SkillScores:
    """Per skill of the instance: a score 1-5, None for N/A, or (in `problems`) why there is neither:
    missing, unreadable, out_of_range."""

    scores: dict[str, float | None]
    problems: dict[str, str]


def parse_skill_scores(text: str | None, skills: list[str]) -> Parsed[Any]:
    """FLASK's reading of a reply (see the module's doc), then each of the instance's skills checked: a number from
    1 to 5, or N/A. A reply with no dictionary, or none of the skills scored or N/A, is a failure."""
    if not text:
        return failed("empty", "empty reply", text)
    found = _DICT.findall(text)
    if not found:
        return failed("unparseable", "no {...} of skill scores in reply", text)
    try:
        obj = ast.literal_eval(found[-1].replace("\n", "").replace("_", " ").lower())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        return failed("unparseable", "the last {...} of the reply is not a dictionary", text)
    given = {_short(_norm(k)): v for k, v in obj.items() if _norm(k)}
    scores: dict[str, float | None] = {}
    problems: dict[str, str] = {}
    for skill in skills:
        value = given.get(_short(skill.lower()))
        if isinstance(value, str) and value.strip() in NA_WORDS:
            scores[skill] = None
            continue
        try:
            number = float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        if value is None:
            problems[skill] = "missing"
        elif number is None or not math.isfinite(number):
            problems[skill] = "unreadable"
        elif not 1 <= number <= 5:
            problems[skill] = "out_of_range"
        else:
            scores[skill] = number
    if not scores and problems:
        kind: FailureKind = "out_of_range" if set(problems.values()) == {"out_of_range"} else "unparseable"
        return failed(kind, "no skill scored: " + ", ".join(f"{k} {v}" for k, v in problems.items()), text)
    return Parsed(SkillScores(scores, problems), None, text)


def scores_schema(skills: list[str]) -> type[BaseModel]:
    """The structured form of a judgment (`eval.judge_output: json`): feedback, then each skill's score 1-5 under
    its own name, so a grammar-constrained judge can only answer for exactly these skills (and, as in FLASK's
    prompt, is not offered N/A)."""
    score = Annotated[int, Field(ge=1, le=5)]
    fields: dict[str, Any] = {f"s{i}": (score, Field(alias=s)) for i, s in enumerate(skills)}
    scores = create_model("Scores", __config__=ConfigDict(populate_by_name=True), **fields)
    return create_model("FlaskReply", feedback=(str, ...), scores=(scores, ...))


COUNTS = ("asked", "scored", "na", "failed", "out_of_range")


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per skill (with a 95% bootstrap interval over instances), per domain (a row's scores count toward each
    of its domains) and per skill x difficulty, N/A kept out as FLASK does; per skill how often it was asked,
    scored, N/A, failed and out of range; judge calls with no usable score by kind (`failures`)."""
    by: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in ("skill", "domain", "skill_difficulty")}
    per_instance: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    failures: Counter[str] = Counter()
    for n, r in enumerate(rows):
        for skill in r["skills"]:
            counts[skill]["asked"] += 1
        if r["scores"] is None:
            failures[r.get("judge_status") or "unparseable"] += 1
            for skill in r["skills"]:
                counts[skill]["failed"] += 1
            continue
        for skill, kind in r.get("problems", {}).items():
            counts[skill]["out_of_range" if kind == "out_of_range" else "failed"] += 1
        for skill, score in r["scores"].items():
            if score is None:
                counts[skill]["na"] += 1
                continue
            counts[skill]["scored"] += 1
            by["skill"][skill].append(score)
            per_instance[skill][r.get("idx", n)].append(score)
            if r["difficulty"]:
                by["skill_difficulty"][f"{skill}|{r['difficulty']}"].append(score)
            for domain in r["domains"]:
                by["domain"][domain].append(score)
    summary = {
        name: {k: {"mean": round(sum(v) / len(v), 3), "n": len(v)} for k, v in sorted(group.items())}
        for name, group in by.items()
    }
    for skill, v in summary["skill"].items():
        interval = question_interval(per_instance[skill])
        v["interval"] = list(interval) if interval else None
    return summary | {
        "na": {s: c["na"] for s, c in sorted(counts.items()) if c["na"]},
        "counts": {s: {k: c[k] for k in COUNTS} for s, c in sorted(counts.items())},
        "failures": sum(failures.values()),
        "failure_kinds": dict(sorted(failures.items())),
        "instances": len(rows),
    }


# Identifies the prompt and rubric texts in judgment provenance and lineage: a change never mixes with old judgments.
TEMPLATE_HASH = sha256_text(
    json.dumps([SYSTEM, INTRO, ASK_FEEDBACK, ASK_DICT, ASK_JSON, {k: asdict(v) for k, v in SKILLS.items()}])
)[:16]
