"""Stage `judge_audit`: measures the judge that graded this evaluation, so its scores are read with its reliability.

Position consistency and rating spread come from the `mt_bench` stage's judgments by this judge; discrimination
comes from probes of known quality drawn from the data (reference answers against degraded copies of themselves),
rated with MT-Bench's single-answer prompt and, with `eval.audit.pairwise`, compared in both orders. Every probe
and reply is written to `probes.jsonl`; the verdict (`tunefold.eval.audit.JudgeAudit`) is the stage's metrics.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunefold.errors import InputError
from tunefold.eval.audit import (
    Probe,
    Reference,
    audit_judge,
    draw_probes,
    position_stats,
    rating_discrimination,
    references_from,
    spread_stats,
    verdict_discrimination,
)
from tunefold.eval.flask import load_instances
from tunefold.eval.judge import ask_judge
from tunefold.eval.mtbench import (
    JudgePrompt,
    Question,
    load_judge_prompts,
    load_questions,
    pair_messages,
    prompt_for,
    single_messages,
)
from tunefold.eval.protocol import JudgeSettings, judge_settings
from tunefold.io import read_jsonl, write_jsonl
from tunefold.llm import Gateway
from tunefold.pipeline.stage import StageContext, log, stage_main


@dataclass(frozen=True)
class Reply:
    value: Any
    failure: str | None
    text: str
    provenance: dict[str, Any]


def ask(gw: Gateway, kind: str, messages: list[dict[str, str]], p: JudgePrompt, judge: JudgeSettings) -> Reply:
    """The audit's one judge call: the same call MT-Bench grading makes, so the audit measures that judge."""
    j = ask_judge(gw, kind, messages, p, judge.output == "json", judge.max_tokens)
    return Reply(j.value if j.ok else None, j.detail, j.result.text or j.result.error or "", j.result.provenance)


def judgments_of(judge: str, judgments_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """This judge's single and pair rows from the mt_bench stage's output; rows of another judge are an error (its
    judgments are stale), not silently audited."""
    if not judgments_dir.is_dir():
        raise InputError(f"{judgments_dir} does not exist; run the mt_bench stage first")
    found: dict[str, list[dict[str, Any]]] = {"single": [], "pair": []}
    others = set()
    for kind, rows in found.items():
        for path in sorted(judgments_dir.glob(f"*_{kind}.jsonl")):
            for row in read_jsonl(path):
                if row["judge"][0] == judge:
                    rows.append(row)
                else:
                    others.add(row["judge"][0])
    if others and not found["single"]:
        raise InputError(f"{judgments_dir} holds judgments by {sorted(others)}, not by {judge}; re-run mt_bench")
    return found["single"], found["pair"]


def rate_probes(gw: Gateway, probes: list[Probe], prompts: dict, judge: JudgeSettings) -> list[dict[str, Any]]:
    """Each reference and each degraded copy rated once with MT-Bench's single-answer prompt for its question."""
    refs = list({p.reference.key: p.reference for p in probes}.values())
    items: list[tuple[Question, str]] = [(r.question, r.answer) for r in refs] + [
        (p.reference.question, p.text) for p in probes
    ]

    def one(item: tuple[Question, str]) -> Reply:
        q, answer = item
        p = prompt_for(prompts, "single", q, 1)
        return ask(gw, "single", single_messages(p, q, [answer], 1), p, judge)

    replies = gw.map("judge", one, items, desc="judge audit: rating probes")
    by_ref = dict(zip((r.key for r in refs), replies, strict=False))
    rows = []
    for probe, reply in zip(probes, replies[len(refs) :], strict=True):
        ref = by_ref[probe.reference.key]
        rows.append(
            _row(probe)
            | {
                "reference_rating": ref.value,
                "degraded_rating": reply.value,
                "failures": [ref.failure, reply.failure],
                "judgments": [ref.text, reply.text],
                "provenance": reply.provenance,
            }
        )
    return rows


def compare_probes(gw: Gateway, probes: list[Probe], prompts: dict, judge: JudgeSettings) -> list[dict[str, Any]]:
    """Each probe as a pairwise question in both orders: the reference shown as A, then as B."""
    items = [(p, reference_first) for p in probes for reference_first in (True, False)]

    def one(item: tuple[Probe, bool]) -> Reply:
        probe, reference_first = item
        q, ref = probe.reference.question, probe.reference.answer
        a, b = (ref, probe.text) if reference_first else (probe.text, ref)
        p = prompt_for(prompts, "pairwise", q, 1)
        return ask(gw, "pairwise", pair_messages(p, q, [a], [b], 1), p, judge)

    replies = gw.map("judge", one, items, desc="judge audit: pairwise probes")
    return [
        _row(probe)
        | {
            "verdicts": [first.value, second.value],
            "failures": [first.failure, second.failure],
            "judgments": [first.text, second.text],
            "provenance": second.provenance,
        }
        for probe, first, second in zip(probes, replies[::2], replies[1::2], strict=True)
    ]


def _row(p: Probe) -> dict[str, Any]:
    return {
        "reference": p.reference.key,
        "degradation": p.degradation,
        "question": p.reference.question.turns[0],
        "reference_answer": p.reference.answer,
        "degraded_answer": p.text,
    }


def load_references(ctx: StageContext) -> list[Reference]:
    cfg = ctx.params.eval
    mt = cfg.mt_bench
    questions = load_questions(Path(mt.questions), Path(mt.references) if mt.references else None)
    return references_from(questions, load_instances(Path(cfg.flask.data)))


def run_judge_audit(ctx: StageContext, judgments_dir: Path, out_dir: Path) -> dict[str, Any]:
    cfg = ctx.params.eval
    audit = cfg.audit
    prompts = load_judge_prompts(Path(cfg.mt_bench.judge_prompts) if cfg.mt_bench.judge_prompts else None)
    gw = ctx.gateway
    judge = gw.model_name("judge")
    single, pairs = judgments_of(judge, judgments_dir)
    probes, skipped = draw_probes(load_references(ctx), list(audit.degradations), audit.references, audit.seed)
    if not probes:
        raise InputError(
            "no reference answer to probe the judge with: the MT-Bench references and FLASK answers "
            f"are empty or too short for {audit.degradations}"
        )
    settings = judge_settings(cfg, ctx.params.llm, "mt_bench", judge)
    rated = rate_probes(gw, probes, prompts, settings)
    compared = compare_probes(gw, probes, prompts, settings) if audit.pairwise else []
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        out_dir / "probes.jsonl",
        [r | {"method": "ratings"} for r in rated] + [r | {"method": "verdicts"} for r in compared],
    )
    discrimination = [rating_discrimination(rated)] + ([verdict_discrimination(compared)] if compared else [])
    result = audit_judge(
        judge, position_stats(pairs), spread_stats(single), discrimination, audit, len(probes), skipped
    )
    (log.info if result.trusted else log.warning)("judge audit: %s", result.summary)
    return result.model_dump(mode="json")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judgments", type=Path, required=True, help="model_judgment directory from `mt_bench`")
    p.add_argument("--out", type=Path, required=True, help="directory for the probes and the judge's replies")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_judge_audit(ctx, args.judgments, args.out)


def main(argv: list[str] | None = None) -> int:
    return stage_main("judge_audit", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
