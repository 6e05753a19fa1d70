"""Judge calls shared by every stage that asks an LLM to grade: MT-Bench, TAPIR's difficulty, CodecLM's filter.

A call returns a `Judgment`: a value only when the reply was complete and parsed on the first, greedy try; else the
kind of failure (call failed, reply cut by max_tokens, unparseable, rating off the scale), so callers count each
kind apart and never average a failure in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from tunefold.eval.mtbench import JSON_INSTRUCTION, JudgePrompt, RatingReply, VerdictReply
from tunefold.llm import ChatRequest, ChatResult, Gateway, Parsed, parse_rating, parse_verdict
from tunefold.llm.parsing import FailureKind, failed
from tunefold.train.training import sha256_text

Status = Literal["ok"] | FailureKind


@dataclass(frozen=True)
class Judgment:
    value: Any | None
    status: Status
    detail: str | None
    result: ChatResult

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def of(cls, parsed: Parsed[Any], result: ChatResult) -> Judgment:
        return cls(parsed.value, "ok" if parsed.ok else (parsed.kind or "unparseable"), parsed.failure, result)


def template_hash(p: JudgePrompt) -> str:
    return sha256_text(p.system_prompt + "\n" + p.prompt_template)[:16]


def ask_judge(
    gw: Gateway,
    kind: str,
    messages: list[dict[str, str]],
    p: JudgePrompt,
    json_output: bool,
    max_tokens: int | None = None,
    attempts: int = 1,
) -> Judgment:
    """A rating or a verdict, from the protocol's text format or from structured JSON.

    Evaluation makes one greedy call (`attempts=1`); data selection (TAPIR's difficulty) may re-ask a JSON judge
    with sampling, since there a value matters more than the protocol.
    """
    if json_output:
        messages = [{"role": "system", "content": messages[0]["content"] + JSON_INSTRUCTION[kind]}, *messages[1:]]
    req = ChatRequest(messages=messages, temperature=0.0, max_tokens=max_tokens, template_hash=template_hash(p))
    if not json_output:
        parser, name = (parse_rating, "mt_bench_rating") if kind == "single" else (parse_verdict, "mt_bench_verdict")
        return Judgment.of(*gw.chat_parsed("judge", req, parser, name))
    parsed, result = gw.chat_json("judge", req, RatingReply if kind == "single" else VerdictReply, attempts)
    if not parsed.ok or parsed.value is None:
        return Judgment.of(parsed, result)
    reply = parsed.value
    value = reply.rating if isinstance(reply, RatingReply) else reply.verdict
    return Judgment(value, "ok", None, result)


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
        return failed("empty", "empty reply", text)
    found = _PAIR.findall(text)
    if not found:
        return failed("unparseable", "no [[a, b]] scores in reply", text)
    a, b = (float(x) for x in found[-1])
    if not (1 <= a <= 10 and 1 <= b <= 10):
        return failed("out_of_range", f"scores {a:g}, {b:g} outside 1-10", text)
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
