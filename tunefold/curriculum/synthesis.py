"""CodecLM's data-free parts: the metadata pool and the Contrastive Filtering decision.

Kept apart from the stage's LLM calls so that the decision rule is tested on hand-written scores.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunefold.data.records import Record
from tunefold.errors import InputError


@dataclass(frozen=True)
class Metadata:
    """What an instruction is for (CodecLM's use case and skills); task_type comes with the use case's seed."""

    use_case: str
    skills: tuple[str, ...]
    task_type: str


def metadata_pool(seeds: list[Record], size: int, rng: random.Random) -> list[Metadata]:
    """Mix the seeds' use cases with skills sampled from all seeds: new combinations beyond the seed set."""
    use_cases = sorted(
        {(str(r.metadata["use_case"]), str(r.metadata.get("task_type", "other"))) for r in seeds
         if r.metadata.get("use_case")}
    )  # fmt: skip
    if not use_cases:
        raise InputError("no seed has a use case (annotation failed for every seed); nothing to synthesize from")
    skills = sorted({s for r in seeds for s in r.metadata.get("skills", []) if s})
    pool: list[Metadata] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for _ in range(size * 20):  # bounded: a small seed set has few distinct combinations
        if len(pool) == size:
            break
        use_case, task_type = rng.choice(use_cases)
        picked = tuple(sorted(rng.sample(skills, rng.randint(1, min(3, len(skills)))))) if skills else ()
        if (use_case, picked) not in seen:
            seen.add((use_case, picked))
            pool.append(Metadata(use_case, picked, task_type))
    return pool


@dataclass(frozen=True)
class Decision:
    keep: bool
    response: str | None  # "teacher" or "student": whose answer becomes the training target
    gap: float  # teacher score - student score
    reason: str


def contrastive_decision(teacher_score: float, student_score: float, theta: float) -> Decision:
    """Keep when the two scores differ by more than theta: the instruction separates a strong model from ours.

    The better answer is the target (almost always the teacher's; CodecLM keeps the student's when it is the one
    far ahead). A gap of at most theta sends the instruction back to Self-Rubrics to be made harder.
    """
    gap = teacher_score - student_score
    if gap > theta:
        return Decision(True, "teacher", gap, f"gap {gap:g} > theta {theta:g}")
    if -gap > theta:
        return Decision(True, "student", gap, f"student ahead by {-gap:g} > theta {theta:g}")
    return Decision(False, None, gap, f"|gap| {abs(gap):g} <= theta {theta:g}")
