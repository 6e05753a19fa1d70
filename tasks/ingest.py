"""Stage `ingest`: read every source in params.yaml into the one record schema, drop duplicates, keep counts.

Outputs (in --out): records.jsonl (one `tunefold.data.records.Record` a line), rejected.jsonl (rows that could not be
read or converted: location, reason, raw text), duplicates.jsonl (each dropped duplicate and the id it repeats).
Counts reconcile: rows_read = rows_rejected + rows_converted; records_candidate = records_kept + duplicates.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tunefold.config import IngestConfig
from tunefold.data.formats import RowError, convert_row, detect_format, read_rows
from tunefold.data.records import Record, make_record, normalized_key
from tunefold.errors import InputError
from tunefold.io import write_jsonl
from tunefold.pipeline.stage import StageContext, log, stage_main

RECORDS, REJECTED, DUPLICATES = "records.jsonl", "rejected.jsonl", "duplicates.jsonl"
COUNTS = (
    "rows_read",
    "rows_rejected",
    "records_candidate",
    "duplicates_exact",
    "duplicates_normalized",
    "records_kept",
)


def ingest(cfg: IngestConfig, out_dir: Path, root: Path = Path()) -> dict[str, Any]:
    """Read all sources; bad rows are written to rejected.jsonl with their location, never silently skipped."""
    kept: list[Record] = []
    rejected: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []
    seen_exact: dict[str, str] = {}
    seen_norm: dict[str, str] = {}
    per_source: dict[str, Counter[str]] = {}
    shapes: Counter[str] = Counter()

    for source in cfg.sources:
        path = root / source.path
        fmt = detect_format(path, source.format)
        counts = per_source.setdefault(source.name or source.path, Counter(dict.fromkeys(COUNTS, 0)))
        for raw in read_rows(path, fmt, source.split):
            counts["rows_read"] += 1
            if raw.row is None:
                rejected.append({"source": raw.location, "reason": raw.error, "raw": raw.raw})
                log.warning("%s: %s", raw.location, raw.error)
                counts["rows_rejected"] += 1
                continue
            try:
                shape, conversations = convert_row(raw.row)
            except RowError as e:
                rejected.append({"source": raw.location, "reason": str(e), "raw": _dump(raw.row)})
                log.warning("%s: %s", raw.location, e)
                counts["rows_rejected"] += 1
                continue
            shapes[shape] += 1
            for i, (messages, alt) in enumerate(conversations):
                loc = raw.location if len(conversations) == 1 else f"{raw.location}#{i}"
                meta = {"shape": shape, "source_name": source.name} if source.name else {"shape": shape}
                rec = make_record(messages, loc, rejected=alt, metadata=meta)
                counts["records_candidate"] += 1
                dup = _duplicate_of(rec, cfg.dedupe, seen_exact, seen_norm)
                if dup:
                    duplicates.append({"id": rec.id, "source": loc, "duplicate_of": dup[1], "kind": dup[0]})
                    counts[f"duplicates_{dup[0]}"] += 1
                else:
                    kept.append(rec)
                    counts["records_kept"] += 1
        if counts["rows_read"] == 0:
            raise InputError(f"{path}: source is empty (no rows)")

    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / RECORDS, kept)
    write_jsonl(out_dir / REJECTED, rejected)
    write_jsonl(out_dir / DUPLICATES, duplicates)
    metrics: dict[str, Any] = {k: sum(c[k] for c in per_source.values()) for k in COUNTS}
    metrics |= {
        "shapes": dict(sorted(shapes.items())),
        "sources": {name: dict(c) for name, c in per_source.items()},
    }
    log.info(
        "ingested %d records from %d rows (%d rejected, %d exact + %d normalised duplicates)",
        len(kept), metrics["rows_read"], metrics["rows_rejected"],
        metrics["duplicates_exact"], metrics["duplicates_normalized"],
    )  # fmt: skip
    if not kept:
        raise InputError(f"no valid records in any source; see {out_dir / REJECTED}")
    return metrics


def _duplicate_of(
    rec: Record, mode: str, seen_exact: dict[str, str], seen_norm: dict[str, str]
) -> tuple[str, str] | None:
    if mode == "none":
        return None
    if rec.id in seen_exact:
        return "exact", seen_exact[rec.id]
    seen_exact[rec.id] = rec.id
    if mode == "normalized":
        key = normalized_key(rec.messages, rec.rejected)
        if key in seen_norm:
            return "normalized", seen_norm[key]
        seen_norm[key] = rec.id
    return None


def _dump(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output directory")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return ingest(ctx.params.ingest, args.out)


def main(argv: list[str] | None = None) -> int:
    return stage_main("ingest", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
