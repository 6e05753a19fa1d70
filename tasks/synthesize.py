"""Stage `synthesize`: CodecLM instruction synthesis with Self-Rubrics and Contrastive Filtering.

Seeds (the user's annotated data, or any file ingest reads, such as the Self-Instruct seed tasks) give use cases
and skills; mixing them makes a metadata pool. For each metadata the teacher writes `instructions_per_metadata`
distinct basic instructions and a set of rubrics with actions. Each iteration, teacher and student (`llm.student`,
the model being trained) answer, and the judge scores both answers in both orders. When the teacher's and
student's scores differ by more than `theta`, the instruction is kept with the better answer, unless that answer
scores below `min_target_score` (a gap between two poor answers teaches nothing); otherwise one sampled action
rewrites it to be harder, up to `max_iterations` times. A kept instruction that repeats an earlier one is dropped.
Every iteration of every instruction is logged with its scores and decision.

Outputs (in --out): records.jsonl (kept instructions), log.jsonl (every iteration), report.md.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tunefold.config import CurriculumConfig
from tunefold.curriculum.prompts import (
    IMPROVE_INSTRUCTION,
    WRITE_INSTRUCTION,
    WRITE_RUBRICS,
    InstructionReply,
    Rubric,
    RubricsReply,
    metadata_text,
    variant_note,
)
from tunefold.curriculum.roles import noise_caveat
from tunefold.curriculum.synthesis import Metadata, contrastive_decision, metadata_pool
from tunefold.curriculum.taxonomy import instruction_key, instruction_text, tag_instructions, with_tag
from tunefold.data.readers import detect_format, read_rows
from tunefold.data.records import Message, Record, make_record, read_records
from tunefold.data.shapes import convert_row
from tunefold.errors import InputError
from tunefold.eval.judge import score_both_orders
from tunefold.io import write_json, write_jsonl, write_text
from tunefold.llm import ChatRequest, Gateway
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.pipeline.summary import md_table


def load_seeds(gw: Gateway, path: Path, limit: int | None) -> tuple[list[Record], int]:
    """Seed records with use cases and skills: annotated records as they are, any other file read like ingest
    reads it and tagged by the teacher. Returns the seeds and how many rows could not be read."""
    if not path.exists():
        raise InputError(f"curriculum.synthesize.seeds: {path} does not exist")
    unreadable = 0
    try:
        seeds = read_records(path, allow_empty=True)
    except ValueError:  # not our record schema: a dataset file
        seeds = []
        for raw in read_rows(path, detect_format(path, "auto")):
            try:
                _, convs = convert_row(raw.row) if raw.row is not None else ("", [])
            except ValueError:
                convs = []
            if not convs:
                unreadable += 1
                log.warning("%s: not usable as a seed", raw.location)
            seeds += [make_record(m, raw.location, r) for m, r in convs[:1]]
    seeds = seeds[:limit] if limit else seeds
    if not seeds:
        raise InputError(f"curriculum.synthesize.seeds: {path} has no seed instructions")
    untagged = [i for i, r in enumerate(seeds) if "use_case" not in r.metadata]
    if untagged:
        tags = tag_instructions(gw, [instruction_text(seeds[i]) for i in untagged], desc="seed tags")
        for i, t in zip(untagged, tags, strict=True):
            seeds[i] = with_tag(seeds[i], t)
    return seeds, unreadable


class Evolver:
    """Runs one metadata's instruction through write -> (answer, judge, decide, harden)* -> kept or dropped."""

    def __init__(self, gw: Gateway, cfg: CurriculumConfig, json_output: bool) -> None:
        self.gw, self.cfg, self.json_output = gw, cfg, json_output

    def _json(self, system: str, user: str, schema: type[Any]) -> Any:
        req = ChatRequest(messages=[{"role": "system", "content": system}, {"role": "user", "content": user}])
        parsed, _ = self.gw.chat_json("teacher", req, schema, attempts=2)
        return parsed.value if parsed.ok else None

    def __call__(self, job: tuple[int, int, Metadata]) -> tuple[Record | None, list[dict[str, Any]], str]:
        index, variant, meta = job
        s = self.cfg.synthesize
        rng = random.Random(f"{self.cfg.seed}:{index}" + (f":{variant}" if variant else ""))
        about = metadata_text(meta.use_case, list(meta.skills))
        base = {"metadata_index": index, "variant": variant, "use_case": meta.use_case, "skills": list(meta.skills)}
        asked = about + variant_note(variant, s.instructions_per_metadata)
        written = self._json(WRITE_INSTRUCTION, asked, InstructionReply)
        if written is None:
            return None, [], "dropped: the teacher wrote no usable instruction"
        instruction = written.instruction.strip()
        rubrics: list[Rubric] = []
        reply = self._json(WRITE_RUBRICS.format(n=s.rubrics), about, RubricsReply)
        if reply is not None:
            rubrics = reply.rubrics[: s.rubrics]
        log_rows: list[dict[str, Any]] = []
        action = None
        for iteration in range(1, s.max_iterations + 1):
            row = base | {"iteration": iteration, "instruction": instruction, "action": action}
            asked = [{"role": "user", "content": instruction}]
            teacher, student = self.gw.answer("teacher", asked), self.gw.answer("student", asked)
            if teacher is None or student is None:
                log_rows.append(row | {"decision": "dropped", "reason": "no answer from teacher or student"})
                return None, log_rows, "dropped: no answer from teacher or student"
            scores, failures = score_both_orders(self.gw, instruction, teacher, student, self.json_output)
            if scores is None:
                log_rows.append(row | {"decision": "dropped", "reason": f"judge unparseable: {failures}"})
                return None, log_rows, "dropped: judge replies unparseable in both orders"
            d = contrastive_decision(scores[0], scores[1], s.theta)
            row |= {
                "teacher_score": scores[0],
                "student_score": scores[1],
                "gap": d.gap,
                "judge_failures": len(failures),
                "reason": d.reason,
            }
            best = max(scores)
            if d.keep and s.min_target_score is not None and best < s.min_target_score:
                why = f"better answer scored {best:g} < min_target_score {s.min_target_score:g}"
                log_rows.append(row | {"decision": "dropped", "reason": why})
                return None, log_rows, "dropped: below the quality floor"
            if d.keep:
                log_rows.append(row | {"decision": "kept"})
                target, other = (teacher, student) if d.response == "teacher" else (student, teacher)
                messages = [Message(role="user", content=instruction), Message(role="assistant", content=target)]
                record = make_record(
                    messages,
                    f"synthesize:{index}" + (f".{variant}" if variant else ""),
                    metadata={
                        "task_type": meta.task_type,
                        "use_case": meta.use_case,
                        "skills": list(meta.skills),
                        "origin": "codeclm",
                        "source_name": "synthesize",
                        "iteration": iteration,
                        "teacher_score": scores[0],
                        "student_score": scores[1],
                        "gap": d.gap,
                        "kept_response": d.response,
                        "student_response": student if d.response == "teacher" else other,
                    },
                )
                return record, log_rows, f"kept at iteration {iteration}"
            if iteration == s.max_iterations:
                log_rows.append(row | {"decision": "dropped"})
                return None, log_rows, f"dropped: gap <= theta after {s.max_iterations} iterations"
            if not rubrics:
                log_rows.append(row | {"decision": "dropped"})
                return None, log_rows, "dropped: gap <= theta and no rubrics to make it harder"
            action = rng.choice(rubrics).action
            harder = self._json(
                IMPROVE_INSTRUCTION, f"Instruction:\n{instruction}\n\nAction: {action}", InstructionReply
            )
            log_rows.append(row | {"decision": "harden"})
            if harder is None:
                return None, log_rows, "dropped: the teacher's rewrite was unusable"
            instruction = harder.instruction.strip()
        raise AssertionError("unreachable: the loop returns on its last iteration")


Outcome = tuple[Record | None, list[dict[str, Any]], str]


def distinct(results: list[Outcome]) -> list[Outcome]:
    """A kept instruction whose text (case and spacing aside) an earlier one already has is dropped as a duplicate:
    a metadata's variants, or two metadata, can lead the teacher to the same instruction."""
    seen: set[str] = set()
    out: list[Outcome] = []
    for record, rows, outcome in results:
        if record is not None:
            key = instruction_key(record)
            if key in seen:
                rows = [*rows[:-1], rows[-1] | {"decision": "dropped", "reason": "duplicate of an earlier instruction"}]
                record, outcome = None, "dropped: duplicate instruction"
            seen.add(key)
        out.append((record, rows, outcome))
    return out


def synthesize(ctx: StageContext) -> tuple[list[Record], list[dict[str, Any]], dict[str, Any]]:
    cfg = ctx.params.curriculum
    gw = ctx.gateway
    seeds, unreadable = load_seeds(gw, Path(cfg.synthesize.seeds), cfg.synthesize.seed_limit)
    pool = metadata_pool(seeds, cfg.synthesize.pool_size, random.Random(cfg.seed))
    log.info("%d seeds -> %d metadata combinations", len(seeds), len(pool))
    evolve = Evolver(gw, cfg, ctx.params.eval.judge_output == "json")
    n = cfg.synthesize.instructions_per_metadata
    jobs = [(i, k, meta) for i, meta in enumerate(pool) for k in range(n)]
    results = distinct(gw.map("teacher", evolve, jobs, desc="Self-Rubrics + Contrastive Filtering"))
    kept = [r for r, _, _ in results if r is not None]
    log_rows = [row for _, rows, _ in results for row in rows]
    outcomes = Counter(o if not o.startswith("kept") else "kept" for _, _, o in results)
    iterations = Counter(int(r.metadata["iteration"]) for r in kept)
    metrics = {
        "seeds": len(seeds),
        "seeds_unreadable": unreadable,
        "metadata": len(pool),
        "instructions_per_metadata": n,
        "instructions": len(jobs),
        "kept": len(kept),
        "kept_fraction": round(len(kept) / len(jobs), 3),
        "outcomes": dict(sorted(outcomes.items())),
        "kept_by_iteration": {str(k): iterations[k] for k in range(1, cfg.synthesize.max_iterations + 1)},
        "kept_from_first_iteration": round(iterations[1] / len(kept), 3) if kept else None,
    }
    if not kept:
        log.warning(
            "contrastive filtering kept no instruction (theta %g); outcomes: %s", cfg.synthesize.theta, dict(outcomes)
        )
    return kept, log_rows, metrics


def run_synthesize(ctx: StageContext, out_dir: Path, plot: Path | None) -> dict[str, Any]:
    kept, log_rows, metrics = synthesize(ctx)
    write_jsonl(out_dir / "records.jsonl", [r.model_dump() for r in kept])
    write_jsonl(out_dir / "log.jsonl", log_rows)
    by_iter = [[k, n] for k, n in metrics["kept_by_iteration"].items()]
    outcomes = [[k, n] for k, n in metrics["outcomes"].items()]
    write_text(
        out_dir / "report.md",
        "### Synthesis (CodecLM)\n\n"
        + noise_caveat(ctx.params.llm)
        + f"{metrics['metadata']} metadata combinations from {metrics['seeds']} seeds, "
        f"{metrics['instructions_per_metadata']} instruction(s) each; kept {metrics['kept']} of "
        f"{metrics['instructions']} ({metrics['kept_fraction']:.0%}).\n\n"
        + md_table(["outcome", "instructions"], outcomes)
        + "\n\n"
        + md_table(["kept at iteration", "instructions"], by_iter)
        + "\n",
    )
    if plot:
        write_json(plot, [{"iteration": int(k), "kept": n} for k, n in metrics["kept_by_iteration"].items()])
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--plot", type=Path, help="kept instructions per iteration, for `dvc plots`")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_synthesize(ctx, args.out, args.plot)


def main(argv: list[str] | None = None) -> int:
    return stage_main("synthesize", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
