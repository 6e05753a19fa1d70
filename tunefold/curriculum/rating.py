"""One answer rated 1-10 by the judge with the project's single-answer prompt: the rating MFD is made of, so an
answer that replaces another (a refined rewrite) is judged on the same scale as the one it replaces."""

from __future__ import annotations

from functools import cache

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
