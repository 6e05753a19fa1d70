"""The teacher's prompts for CodecLM synthesis and TAPIR response refinement, written by the project."""

from __future__ import annotations

from pydantic import BaseModel, Field

WRITE_INSTRUCTION = (
    "You write realistic instructions that a user could give an AI assistant. Write one self-contained instruction "
    "for the use case and skills below. Include any text or data the task needs inside the instruction itself. "
    'Reply as a JSON object with the key "instruction".'
)


EXPAND_INSTRUCTION = (
    "You write instructions that users give an AI assistant. Write one new, self-contained instruction of the task "
    "type described below, at least as demanding as the examples but about a different subject. Include any text "
    'or data the task needs inside the instruction. Reply as a JSON object with the key "instruction".'
)


def expansion_text(task_type: str, description: str, examples: list[str], k: int, n: int) -> str:
    """What the teacher is shown to write the k-th new instruction of a scarce task type."""
    shown = "\n".join(f"- {e}" for e in examples)
    return f"Task type: {task_type} ({description})\n\nHardest examples so far:\n{shown}" + variant_note(k, n)


def variant_note(k: int, n: int) -> str:
    """Appended to the metadata text for a metadata's second and later instructions, so each asks for another."""
    return "" if k == 0 else f"\n\nThis is instruction {k + 1} of {n} for this use case: make it clearly different."


WRITE_RUBRICS = (
    "You design ways to make instructions for an AI assistant more demanding. For the use case and skills below, "
    "write {n} rubrics, each naming one aspect of complexity a harder instruction would test, paired with an action "
    "that rewrites an instruction to test it (for example: add a constraint, require a justification, add a "
    'counterexample to handle). Reply as a JSON object with the key "rubrics": a list of objects with keys '
    '"rubric" and "action".'
)

IMPROVE_INSTRUCTION = (
    "You make an instruction for an AI assistant more challenging while keeping it answerable and on the same use "
    "case. Apply exactly the action given. Keep it self-contained. Reply as a JSON object with the key "
    '"instruction" holding only the rewritten instruction.'
)


def metadata_text(use_case: str, skills: list[str]) -> str:
    return f"Use case: {use_case}\nSkills: {', '.join(skills) or 'general'}"


class InstructionReply(BaseModel):
    instruction: str = Field(min_length=8)


class Rubric(BaseModel):
    rubric: str = Field(min_length=3)
    action: str = Field(min_length=3)


class RubricsReply(BaseModel):
    rubrics: list[Rubric] = Field(min_length=1)


# TAPIR's response refinement: one rewriting instruction per task type, so each kind of answer is shaped the way a
# student learns it best (reasoning spelled out, code commented, extractions exact).
REFINE_SYSTEM = (
    "You improve an AI assistant's answer to a user's instruction. Keep every correct fact and fix any error. "
    "{style} Reply with the improved answer only, with no preamble about the rewrite."
)
REFINE_STYLE = {
    "math": "Solve step by step: state what is given, show each calculation on its own line, end with the result.",
    "reasoning": "Reason step by step: state the premises, draw one inference per step, then state the conclusion.",
    "coding": "Give complete, runnable code with comments on the non-obvious lines, then a short explanation.",
    "extraction": "Answer only with the requested items, exactly as they appear in the text, in the format asked.",
    "classification": "Give the label first, then one sentence on why.",
    "summarization": "Keep only the main points, in fewer words than the source, with no new claims.",
    "rewriting": "Keep the meaning; change only what the instruction asks to change.",
    "writing": "Make it well organised and vivid, in the tone and length the user asked for.",
    "roleplay": "Stay in character consistently and answer in the persona's voice.",
    "brainstorming": "Give a numbered list of distinct ideas, each with a short explanation.",
    "stem": "Explain accurately and clearly, define technical terms, give an example.",
    "humanities": "Explain accurately with context, present the main perspectives fairly.",
    "open_qa": "Answer directly first, then give the key supporting details.",
    "other": "Make it correct, helpful, clear and concise.",
}


def refine_messages(task_type: str, instruction: str, answer: str) -> list[dict[str, str]]:
    system = REFINE_SYSTEM.format(style=REFINE_STYLE.get(task_type, REFINE_STYLE["other"]))
    user = f"### Instruction\n{instruction}\n\n### Answer to improve\n{answer}\n"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
