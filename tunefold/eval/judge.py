"""Judge calls shared by every stage that asks an LLM to grade: MT-Bench, TAPIR's difficulty, CodecLM's filter.

Each call returns (value, failure, result): a parsed score or verdict, or the reason there is none, so callers keep
parse failures apart from scores.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

from tunefold.eval.mtbench import JSON_INSTRUCTION, JudgePrompt, RatingReply, VerdictReply
from tunefold.llm import ChatRequest, ChatResult, Gateway, Parsed, parse_rating, parse_verdict
from tunefold.train.training import sha256_text


def template_hash(p: JudgePrompt) -> str:
    return sha256_text(p.system_prompt + "\n" + p.prompt_template)[:16]


def ask_judge(
    gw: Gateway, kind: str, messages: list[dict[str, str]], p: JudgePrompt, json_output: bool
) -> tuple[Any, str | None, ChatResult]:
    """A rating or a verdict, from the protocol's text format or from structured JSON."""
    if json_output:
        messages = [{"role": "system", "content": messages[0]["content"] + JSON_INSTRUCTION[kind]}, *messages[1:]]
    req = ChatRequest(messages=messages, temperature=0.0, template_hash=template_hash(p))
    if not json_output:
        parser, name = (parse_rating, "mt_bench_rating") if kind == "single" else (parse_verdict, "mt_bench_verdict")
        parsed, result = gw.chat_parsed("judge", req, parser, name)
        return (parsed.value if parsed.ok else None), parsed.failure, result
    parsed, result = gw.chat_json("judge", req, RatingReply if kind == "single" else VerdictReply, attempts=2)
    if not parsed.ok or parsed.value is None:
        return None, parsed.failure, result
    reply = parsed.value
    return (reply.rating if isinstance(reply, RatingReply) else reply.verdict), None, result


class PairScores(BaseModel):
    """Both answers scored 1-10 in one reply (CodecLM's contrastive filtering)."""

    explanation: str
    score_a: int = Field(ge=1, le=10)
    score_b: int = Field(ge=1, le=10)


PAIR_SCORES_SYSTEM = (
    "You compare two AI assistant answers to the same user instruction. Judge each on correctness, helpfulness, "
    "depth and clarity, independently of the order in which they are shown and of their length. Explain the main "
    "differences in two or three sentences, then score each answer from 1 (useless) to 10 (excellent)."
)
PAIR_SCORES_TEXT = " End your reply with both scores in exactly this form: [[score of A, score of B]], e.g. [[7, 4]]."
PAIR_SCORES_JSON = "\n\nReply as a JSON object with keys explanation, score_a and score_b (integers 1-10)."
PAIR_SCORES_TEMPLATE = "### Instruction\n{question}\n\n### Answer A\n{answer_a}\n\n### Answer B\n{answer_b}\n"
_PAIR = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_pair_scores(text: str | None) -> Parsed[Any]:
    """The last `[[a, b]]` in the reply; scores outside 1-10 are a failure."""
    if not text:
        return Parsed(None, "empty reply", text)
    found = _PAIR.findall(text)
    if not found:
        return Parsed(None, "no [[a, b]] scores in reply", text)
    a, b = (float(x) for x in found[-1])
    if not (1 <= a <= 10 and 1 <= b <= 10):
        return Parsed(None, f"scores {a:g}, {b:g} outside 1-10", text)
    return Parsed((a, b), None, text)


def score_pair(
    gw: Gateway, question: str, answer_a: str, answer_b: str, json_output: bool
) -> tuple[tuple[float, float] | None, str | None, ChatResult]:
    """(score of A, score of B) in one judge call, temperature 0."""
    user = PAIR_SCORES_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b)
    system = PAIR_SCORES_SYSTEM + (PAIR_SCORES_JSON if json_output else PAIR_SCORES_TEXT)
    req = ChatRequest(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        temperature=0.0,
        template_hash=sha256_text(system + PAIR_SCORES_TEMPLATE)[:16],
    )
    if not json_output:
        parsed, result = gw.chat_parsed("judge", req, parse_pair_scores, "pair_scores")
        return (parsed.value if parsed.ok else None), parsed.failure, result
    reply, result = gw.chat_json("judge", req, PairScores, attempts=2)
    if not reply.ok or reply.value is None:
        return None, reply.failure, result
    return (float(reply.value.score_a), float(reply.value.score_b)), None, result


def score_both_orders(
    gw: Gateway, question: str, first: str, second: str, json_output: bool
) -> tuple[tuple[float, float] | None, list[str]]:
    """Mean scores of (first, second) over both presentation orders, which cancels the judge's position bias.

    An order whose reply does not parse is left out (its failure returned); None when neither parses.
    """
    ab, fail_ab, _ = score_pair(gw, question, first, second, json_output)
    ba, fail_ba, _ = score_pair(gw, question, second, first, json_output)
    pairs = [p for p in (ab, None if ba is None else (ba[1], ba[0])) if p is not None]
    failures = [f for f in (fail_ab, fail_ba) if f]
    if not pairs:
        return None, failures
    return (sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs)), failures
