"""Evaluation protocols as data: the published MT-Bench and FLASK settings, and how a run deviates from them.

`official` runs with the published settings; `quick` with the params' own (short answers, a small judge). Either
way every score carries a comparability record: "comparable to published MT-Bench", or each deviation spelled out,
so a number from a 128-token, 135M-judge run is never read as a leaderboard figure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunefold.config import EvalConfig, LLMConfig
from tunefold.errors import InputError

Benchmark = Literal["mt_bench", "flask"]


@dataclass(frozen=True)
class Published:
    """What the benchmark's authors ran (FastChat llm_judge; kaistAI/FLASK gpt_review), as facts to compare with."""

    name: str
    answer_max_tokens: int
    judge_max_tokens: int
    judge_models: tuple[str, ...]  # model ids of the published judge
    files: dict[str, tuple[str, int]]  # role -> (sha256 of the published file, its rows)


MT_BENCH = Published(
    name="MT-Bench",
    answer_max_tokens=1024,  # gen_model_answer.py --max-new-token
    judge_max_tokens=2048,  # common.py: OpenAI judges
    judge_models=("gpt-4", "gpt-4-0613"),
    files={
        "questions": ("119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7", 80),
        "references": ("f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f", 30),
        "judge_prompts": ("fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6", 8),
    },
)
FLASK = Published(
    name="FLASK",
    answer_max_tokens=1024,  # model_output/inference.py
    judge_max_tokens=1024,  # gpt_review/gpt4_eval.py --max-tokens
    judge_models=("gpt-4-0613", "gpt-4"),
    files={
        "questions": ("791950bf1f159b048eba8fee205eba606926c25467a9a31e6f9b6affc2e3e13d", 1740),
        "hard": ("9830d65b2a137b9184039850c748f52dde369377a0ae06c00ccb6d464d5ebb48", 89),
    },
)
PUBLISHED: dict[Benchmark, Published] = {"mt_bench": MT_BENCH, "flask": FLASK}


@dataclass(frozen=True)
class JudgeSettings:
    """What every judge call of one benchmark is sent with, resolved from the protocol and params."""

    protocol: str
    output: Literal["text", "json"]
    max_tokens: int
    model: str


def answer_max_tokens(cfg: EvalConfig) -> int:
    """Answer length cap for generation: the published 1024 under `official`, else eval.max_new_tokens."""
    return MT_BENCH.answer_max_tokens if cfg.protocol == "official" else cfg.max_new_tokens


def judge_settings(cfg: EvalConfig, llm: LLMConfig, benchmark: Benchmark, judge_model: str) -> JudgeSettings:
    """`official`: text output and the published judge length, and MT-Bench needs FastChat's own prompts file."""
    if cfg.protocol == "official":
        if benchmark == "mt_bench" and not cfg.mt_bench.judge_prompts:
            raise InputError(
                "eval.protocol official judges with FastChat's prompts: set eval.mt_bench.judge_prompts to its "
                "judge_prompts.jsonl (FastChat fastchat/llm_judge/data/judge_prompts.jsonl)"
            )
        return JudgeSettings("official", "text", PUBLISHED[benchmark].judge_max_tokens, judge_model)
    return JudgeSettings("quick", cfg.judge_output, llm.judge.max_tokens, judge_model)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def comparability(
    benchmark: Benchmark, cfg: EvalConfig, judge: JudgeSettings, files: dict[str, Path | None], judged_items: int
) -> dict[str, Any]:
    """Each way this run differs from the published protocol, in words; none = comparable to published numbers.

    `files` maps the roles of `Published.files` to what the run used (None: not given); `judged_items` is how
    many questions/instances were judged (a subset is not the benchmark).
    """
    pub = PUBLISHED[benchmark]
    deviations = []
    if (cap := answer_max_tokens(cfg)) != pub.answer_max_tokens:
        deviations.append(f"answers capped at {cap} tokens (official {pub.answer_max_tokens})")
    if judge.max_tokens != pub.judge_max_tokens:
        deviations.append(f"judge replies capped at {judge.max_tokens} tokens (official {pub.judge_max_tokens})")
    if judge.output != "text":
        deviations.append("judge asked for JSON output (official: the protocol's text format)")
    if judge.model not in pub.judge_models:
        deviations.append(f"judge {judge.model} (official {pub.judge_models[0]})")
    for role, (sha, rows) in pub.files.items():
        if role not in files:
            continue
        path = files[role]
        if path is None:
            deviations.append(f"no {role.replace('_', ' ')} file (official: the published one)")
        elif file_sha256(path) != sha:
            deviations.append(f"{role.replace('_', ' ')} file {path.name} is not the published one ({rows} rows)")
    total = pub.files["questions"][1]
    if judged_items != total:
        deviations.append(f"{judged_items} items judged (official {total})")
    comparable = not deviations
    line = (
        f"comparable to published {pub.name}"
        if comparable
        else f"not comparable to published {pub.name}: " + "; ".join(deviations)
    )
    return {"protocol": cfg.protocol, "comparable": comparable, "deviations": deviations, "line": line}
