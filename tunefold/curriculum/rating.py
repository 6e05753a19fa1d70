"""One answer rated 1-10 by the judge with the project's single-answer prompt, and TAPIR's Model Fitting Difficulty
made of two such ratings (the target answer's minus the student's). `difficulty` scores every instruction with it,
`refine` a rewrite, `plan_curriculum` the instructions the teacher writes for scarce task types: one scale."""

from __future__ import annotations

from functools import cache

from tunefold.data.records import Message, Record, with_response
from tunefold.eval.judge import ask_judge
from tunefold.eval.mtbench import JudgePrompt, Question, load_judge_prompts, single_messages
from tunefold.llm import Gateway


@cache
def single_prompt() -> JudgePrompt:
    return load_judge_prompts(None)[("single", False, False)]


def rate_answer(gw: Gateway, user_text: str, answer: str, json_output: bool) -> tuple[float | None, str | None]:
    """The judge's 1-10 rating of `answer` to `user_text`, or None and why it could not be read."""
    prompt = single_prompt()
    messages = single_messages(prompt, Question(0, "general", [user_text]), [answer], 1)
    j = ask_judge(gw, "single", messages, prompt, json_output, attempts=2)
    if not j.ok:
        return None, f"judge reply {j.status}: {j.detail}"
    return float(j.value), None


def _chat(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def score_record(gw: Gateway, r: Record, use_dataset: bool, json_output: bool) -> tuple[Record | None, str | None]:
    """The record with its teacher/student scores and MFD, or None and why it cannot be scored."""
    synthesized = r.metadata.get("origin") == "codeclm"  # its target answer was already chosen by the filter
    prompt = _chat(r.prompt)
    target = r.response if (use_dataset or synthesized) else gw.answer("teacher", prompt)
    student = gw.answer("student", prompt)
    if target is None or student is None:
        return None, "no answer from " + ("the teacher" if target is None else "the student")
    user_text = r.instruction
    scores = []
    for answer in (target, student):
        score, why = rate_answer(gw, user_text, answer, json_output)
        if score is None:
            return None, why
        scores.append(score)
    scored = with_response(
        r,
        target,
        teacher_score=scores[0],
        student_score=scores[1],
        mfd=scores[0] - scores[1],
        student_response=student,
        target="dataset" if use_dataset or synthesized else "teacher",
    )
    return scored, None
