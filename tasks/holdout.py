"""Stage `holdout`: decontamination and the validation split, once, upstream of everything that trains.

Reads the annotated records (each with its task type). First every record that contains an evaluation question
(MT-Bench turns, FLASK and FLASK-HARD instructions, `holdout.eval_sets`) is quarantined with the question it
matched (`tunefold.data.decontam`). The rest is split by prompt group (`tunefold.data.subsets.holdout_split`):
`holdout.val_fraction` of the groups, at least `min_val`, stratified by source and task type, seeded. The
curriculum (synthesis seeds, difficulty) sees only the train side, so no round ever trains on a held-out prompt;
SFT measures every round on the held-out conversations and DPO on the held-out preference pairs among them.

Outputs (in --out): train.jsonl, val.jsonl, contaminated.jsonl (record, file:line, matched question, reason),
report.md. Records in = contaminated + train + val.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tunefold.data.decontam import eval_index, quarantine
from tunefold.data.records import Record, read_records
from tunefold.data.subsets import holdout_split
from tunefold.errors import InputError
from tunefold.io import write_jsonl, write_text
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.pipeline.summary import md_table


def stratum(r: Record) -> str:
    """Source (the name given in `ingest`, else the file) and task type, and whether the record is a pair."""
    return f"{r.source_name}|{r.metadata.get('task_type', 'other')}|{'pair' if r.rejected else 'sft'}"


def run_holdout(ctx: StageContext, records_path: Path, out_dir: Path) -> dict[str, Any]:
    cfg = ctx.params.holdout
    records = read_records(records_path)
    index = eval_index(cfg, ctx.params.eval)
    items = len(index.items) if index is not None else 0
    records, contaminated = quarantine(records, index) if index is not None else (records, [])
    for row in contaminated:
        log.warning("%s: quarantined, %s", row["where"], row["reason"])
    if not records:
        raise InputError(f"{records_path}: every record contains an evaluation question; nothing is left to train on")
    split = holdout_split(records, cfg.val_fraction, cfg.min_val, cfg.seed, stratum)
    if not split.val:
        log.warning("no record is held out (holdout.val_fraction and min_val give 0): training is not validated")
    write_jsonl(out_dir / "train.jsonl", [r.model_dump() for r in split.train])
    write_jsonl(out_dir / "val.jsonl", [r.model_dump() for r in split.val])
    write_jsonl(out_dir / "contaminated.jsonl", contaminated)
    by_set: dict[str, int] = {}
    for row in contaminated:
        by_set[row["set"]] = by_set.get(row["set"], 0) + 1
    metrics = {
        "records_in": len(records) + len(contaminated),
        "contaminated": len(contaminated),
        "contaminated_by_set": by_set,
        "eval_questions_checked": items,
        "train": len(split.train),
        "val": len(split.val),
        "val_pairs": sum(r.rejected is not None for r in split.val),
        "strata": split.strata,
    }
    rows = [[name, n["train"], n["val"]] for name, n in split.strata.items()]
    write_text(
        out_dir / "report.md",
        "### Held-out split and decontamination\n\n"
        f"{metrics['records_in']} records: {len(contaminated)} quarantined for containing one of {items} evaluation "
        f"questions, {len(split.train)} to train on, {len(split.val)} held out ({metrics['val_pairs']} of them "
        "preference pairs), by prompt group, stratified by source | task type | kind.\n\n"
        + md_table(["stratum", "train", "held out"], rows)
        + "\n",
    )
    log.info(
        "holdout: %d records -> %d train, %d held out, %d contaminated",
        metrics["records_in"],
        len(split.train),
        len(split.val),
        len(contaminated),
    )
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=Path, required=True, help="annotated records (stage annotate)")
    p.add_argument("--out", type=Path, required=True, help="output directory")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_holdout(ctx, args.records, args.out)


def main(argv: list[str] | None = None) -> int:
    return stage_main("holdout", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
