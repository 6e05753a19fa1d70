"""Which models play the curriculum's roles. TAPIR and CodecLM measure a gap between a strong teacher and the
student, read by a judge; when all three are the same weights (the embedded demo: SmolLM2 grades itself) the
gaps and scores are the model's noise about itself, and the reports must say so."""

from __future__ import annotations

from typing import Literal

from tunefold.config import LLMConfig

ROLES = ("teacher", "student", "judge")


def weights_of(llm: LLMConfig, role: str) -> tuple[str, str]:
    """What identifies a role's model: the embedded server's GGUF, or the endpoint URL and model id."""
    ep = getattr(llm, role)
    if ep.base_url is None:
        return ("embedded", llm.embedded.model)
    return (ep.base_url.rstrip("/"), ep.model or "")


def same_weights(llm: LLMConfig, roles: tuple[str, ...] = ROLES) -> bool:
    return len({weights_of(llm, r) for r in roles}) == 1


def target_responses(setting: str, llm: LLMConfig) -> Literal["teacher", "dataset"]:
    """`curriculum.difficulty.responses: auto`: the teacher writes the targets when it is another model than the
    student (TAPIR), else the dataset's own answers are kept (a model rewriting for itself teaches nothing new)."""
    if setting == "auto":
        return "dataset" if same_weights(llm, ("teacher", "student")) else "teacher"
    return "teacher" if setting == "teacher" else "dataset"


def noise_caveat(llm: LLMConfig) -> str:
    """A Markdown paragraph for every curriculum report when teacher, student and judge are one model, else ''."""
    if not same_weights(llm):
        return ""
    where, model = weights_of(llm, "teacher")
    name = (
        f"the embedded server's {model if model != 'embedded' else 'SmolLM2-135M-Instruct'}"
        if where == "embedded"
        else f"{model} at {where}"
    )
    return (
        f"> **Teacher, student and judge are the same model: {name}.** The scores, gaps (MFD, CodecLM's "
        "teacher-student gap) and tags below are that model grading itself: noise, not a measure of what is hard "
        "for the student. Configure a stronger teacher and judge (`llm.teacher`, `llm.judge`) for a real "
        "curriculum.\n\n"
    )
