"""The task taxonomy and the teacher's tagging of instructions with a task type and CodecLM metadata.

The taxonomy is fixed (the curriculum's target distribution is over these names) and follows MT-Bench's eight
categories plus the common instruction-data task families. A tag that cannot be parsed becomes `other` and is
counted, so no record is lost for want of a label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from tunefold.config import TASK_TYPES
from tunefold.data.records import Record
from tunefold.llm import ChatRequest, Gateway

TASK_DESCRIPTIONS = {
    "writing": "compose original prose: essays, stories, emails, posts, poems",
    "roleplay": "speak as a character, persona or in an imagined scenario",
    "reasoning": "logic puzzles, deductions, multi-step inference without heavy arithmetic",
    "math": "arithmetic, algebra, geometry, probability and other quantitative problems",
    "coding": "write, explain, fix or review program code",
    "extraction": "pull specific facts, fields or structure out of a given text",
    "stem": "explain science, technology, engineering or medicine knowledge",
    "humanities": "explain history, philosophy, law, economics, arts or social science knowledge",
    "brainstorming": "generate many ideas, options or suggestions",
    "classification": "assign a given item or text to categories or labels",
    "summarization": "condense a given text",
    "rewriting": "paraphrase, edit, translate or change the style of a given text",
    "open_qa": "answer a general factual or advice question",
    "other": "anything that fits none of the above",
}
assert tuple(TASK_DESCRIPTIONS) == TASK_TYPES

TaskType = Literal[TASK_TYPES]  # type: ignore[valid-type]


class TaskTag(BaseModel):
    """The teacher's label of one instruction."""

    task_type: TaskType
    use_case: str = Field(max_length=80, description="what the user wants to get done, in a few words")
    skills: list[str] = Field(max_length=3, description="up to 3 skills an answer needs, a few words each")


TAG_SYSTEM = (
    "You label instructions given to an AI assistant. Pick the one task type that fits best from this list:\n"
    + "\n".join(f"- {name}: {text}" for name, text in TASK_DESCRIPTIONS.items())
    + "\nAlso name the use case (what the user wants to get done, in a few words) and up to three skills a good "
    "answer needs (a few words each). Reply as a JSON object with keys task_type, use_case and skills."
)


def instruction_text(record: Record, limit: int = 2000) -> str:
    """The user's request as one text: the last user turn, which is what the final answer responds to."""
    users = [m.content for m in record.prompt if m.role == "user"]
    return (users[-1] if users else "")[:limit]


@dataclass(frozen=True)
class Tagged:
    tag: TaskTag
    failure: str | None


def instruction_key(record: Record) -> str:
    """The instruction with case and spacing normalised: two records with the same key ask the same thing."""
    return " ".join(instruction_text(record).lower().split())


def tag_instructions(gw: Gateway, instructions: list[str], desc: str = "task tags") -> list[Tagged]:
    """One structured teacher call per instruction; an unparseable reply gives `other` with its failure."""
    reqs = [
        ChatRequest(messages=[{"role": "system", "content": TAG_SYSTEM}, {"role": "user", "content": text}],
                    temperature=0.0)
        for text in instructions
    ]  # fmt: skip
    out = []
    for parsed, _ in gw.batch_json("teacher", reqs, TaskTag, desc=desc, attempts=2):
        if parsed.ok and parsed.value is not None:
            out.append(Tagged(parsed.value, None))
        else:
            out.append(Tagged(TaskTag(task_type="other", use_case="", skills=[]), parsed.failure or "no reply"))
    return out


def with_tag(record: Record, tagged: Tagged) -> Record:
    meta = record.metadata | {
        "task_type": tagged.tag.task_type,
        "use_case": tagged.tag.use_case.strip(),
        "skills": [s.strip() for s in tagged.tag.skills if s.strip()],
        "tag_failure": tagged.failure,
    }
    return record.model_copy(update={"metadata": meta})
