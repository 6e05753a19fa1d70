"""Stage `ingest`: read every source in params.yaml into the one record schema, drop duplicates, keep counts.

Outputs (in --out): records.jsonl (one `tunefold.data.records.Record` a line), rejected.jsonl (rows that could not
be read or converted: `file:line`, reason, raw text), duplicates.jsonl (each dropped duplicate and the id it
repeats). Counts reconcile per source: rows_read = rows_rejected + rows_converted; records_candidate =
records_kept + duplicates. A source whose rows are all rejected, or more than `ingest.max_reject_fraction` of
them, stops the stage; nothing is then written to --out, and the rejected rows go to `<out>.failed/`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunefold.config import IngestConfig, SourceConfig
from tunefold.data.readers import RawRow, detect_format, read_rows
from tunefold.data.records import Record, make_record, normalized_key
from tunefold.data.shapes import RowError, convert_row, source_id
from tunefold.errors import InputError
from tunefold.io import atomic_dir, write_json, write_jsonl
from tunefold.pipeline.dag import declared_deps, untracked
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
_LOGGED_PER_SOURCE = 5  # rejected rows logged one by one; the rest are summed up by reason


@dataclass
class SourceTally:
    """What one entry of `ingest.sources` gave: counts, and its rejections grouped by reason with examples."""

    label: str
    path: Path
    counts: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(COUNTS, 0)))
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def reject(self, location: str, reason: str) -> None:
        self.counts["rows_rejected"] += 1
        if self.counts["rows_rejected"] <= _LOGGED_PER_SOURCE:
            log.warning("%s: %s", location, reason)
        kind = re.sub(r"\d+", "N", reason)[:160]
        self.reasons[kind] += 1
        if len(self.examples.setdefault(kind, [])) < 3:
            self.examples[kind].append(location.rsplit(":", 1)[-1])

    def top_reasons(self, n: int = 3) -> str:
        """The commonest reasons with example locations: `line 3` in text files, `row 3` in Parquet/HF data."""
        parts = []
        for kind, count in self.reasons.most_common(n):
            where = self.examples[kind]
            unit = "line " if all(w.isdigit() for w in where) else ""
            parts.append(f"{count} x {kind} (e.g. {unit}{', '.join(where)})")
        return "; ".join(parts)

    def problem(self, max_fraction: float) -> str | None:
        """Why this source stops the stage, or None."""
        read, bad = self.counts["rows_read"], self.counts["rows_rejected"]
        if read == 0:
            return f"source {self.label} ({self.path}) is empty (no rows)"
        if bad == read:
            return f"source {self.label} ({self.path}): all {read} rows rejected: {self.top_reasons()}"
        if bad / read > max_fraction:
            return (
                f"source {self.label} ({self.path}): {bad} of {read} rows ({bad / read:.1%}) rejected, above "
                f"ingest.max_reject_fraction={max_fraction}: {self.top_reasons()}"
            )
        return None


def ingest(cfg: IngestConfig, out_dir: Path, root: Path = Path()) -> dict[str, Any]:
    """Read all sources; bad rows are written to rejected.jsonl with their location, never silently skipped."""
    kept: list[Record] = []
    rejected: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []
    seen_exact: dict[str, str] = {}
    seen_norm: dict[str, str] = {}
    tallies: list[SourceTally] = []
    shapes: Counter[str] = Counter()

    for source in cfg.sources:
        path = root / source.path
        fmt = detect_format(path, source.format)
        tally = SourceTally(source.name or source.path, path)
        tallies.append(tally)
        rows = read_rows(path, fmt, source.split, cfg.max_row_bytes, tuple(source.json_columns))
        for raw in rows:
            tally.counts["rows_read"] += 1
            converted = _convert(raw, source)
            if isinstance(converted, str):
                tally.reject(raw.location, converted)
                rejected.append({"source": raw.location, "reason": converted, "raw": raw.raw})
                continue
            shapes[converted[0].metadata["shape"]] += 1
            for rec in converted:
                tally.counts["records_candidate"] += 1
                dup = _duplicate_of(rec, cfg.dedupe, seen_exact, seen_norm)
                if dup:
                    duplicates.append({"id": rec.id, "source": rec.source, "duplicate_of": dup[1], "kind": dup[0]})
                    tally.counts[f"duplicates_{dup[0]}"] += 1
                else:
                    kept.append(rec)
                    tally.counts["records_kept"] += 1
        if tally.counts["rows_rejected"] > _LOGGED_PER_SOURCE:
            log.warning(
                "%s: %d rows rejected in all: %s", tally.label, tally.counts["rows_rejected"], tally.top_reasons()
            )

    metrics = _metrics(tallies, shapes)
    log.info(
        "ingested %d records from %d rows (%d rejected, %d exact + %d normalised duplicates)",
        len(kept),
        metrics["rows_read"],
        metrics["rows_rejected"],
        metrics["duplicates_exact"],
        metrics["duplicates_normalized"],
    )
    failed_dir = out_dir.with_name(out_dir.name + ".failed")
    problems = [p for t in tallies if (p := t.problem(cfg.max_reject_fraction))]
    if problems or not kept:
        with atomic_dir(failed_dir) as tmp:
            write_jsonl(tmp / REJECTED, rejected)
            write_json(tmp / "metrics.json", metrics)
        problems = problems or ["no valid records in any source"]
        raise InputError(
            "; ".join(problems) + f". Every rejected row with its reason: {failed_dir / REJECTED} "
            f"(nothing was written to {out_dir})"
        )
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / RECORDS, kept)
        write_jsonl(tmp / REJECTED, rejected)
        write_jsonl(tmp / DUPLICATES, duplicates)
    shutil.rmtree(failed_dir, ignore_errors=True)
    return metrics


def _convert(raw: RawRow, source: SourceConfig) -> list[Record] | str:
    """The row's records, or the reason it has none."""
    if raw.row is None:
        return raw.error or "unreadable row"
    try:
        shape, conversations = convert_row(raw.row)
    except RowError as e:
        return str(e)
    meta: dict[str, Any] = {"shape": shape}
    if source.name:
        meta["source_name"] = source.name
    if (own_id := source_id(raw.row)) is not None:
        meta["source_id"] = own_id
    return [
        make_record(messages, raw.location if len(conversations) == 1 else f"{raw.location}#{i}", alt, dict(meta))
        for i, (messages, alt) in enumerate(conversations)
    ]


def _metrics(tallies: list[SourceTally], shapes: Counter[str]) -> dict[str, Any]:
    by_label: dict[str, Counter[str]] = {}
    for t in tallies:
        by_label.setdefault(t.label, Counter(dict.fromkeys(COUNTS, 0))).update(t.counts)
    metrics: dict[str, Any] = {k: sum(t.counts[k] for t in tallies) for k in COUNTS}
    metrics["shapes"] = dict(sorted(shapes.items()))
    metrics["sources"] = {label: dict(c) for label, c in by_label.items()}
    metrics["reject_reasons"] = {t.label: dict(t.reasons.most_common(10)) for t in tallies if t.reasons}
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


def warn_untracked_sources(cfg: IngestConfig, dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """Sources that are not deps of `ingest` in dvc.yaml: DVC would not notice when they change."""
    deps = declared_deps(dvc_yaml, "ingest")
    missing = [] if deps is None else untracked([s.path for s in cfg.sources], deps)
    for path in missing:
        log.warning("source %s is not a dep of stage ingest in dvc.yaml: DVC will not see it change", path)
    return missing


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output directory")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    warn_untracked_sources(ctx.params.ingest)
    return ingest(ctx.params.ingest, args.out)


def main(argv: list[str] | None = None) -> int:
    return stage_main("ingest", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
