"""Stage `validate`: a Great Expectations suite over the ingested records; clean rows pass, the rest are quarantined.

Each row is described by a few derived columns (role sequence, shortest turn, token count under the base
model's chat template, share of letters in allowed scripts, forbidden characters) and the suite checks them.
Every failing row goes to quarantine.jsonl with the checks it failed; counts reconcile:
rows = clean + quarantined. If the quarantined share exceeds `validate.max_reject_fraction`, the stage fails
after writing its outputs, so the quarantine file is there to read.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefold.config import ValidateConfig
from tunefold.errors import InputError
from tunefold.io import atomic_dir, write_json, write_jsonl, write_text
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.train.models import load_tokenizer

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

CLEAN, QUARANTINE = "clean.jsonl", "quarantine.jsonl"
REPORT_JSON, REPORT_MD = "report.json", "report.md"
ROLE_ORDER = r"^(?:system,)?(?:user,assistant,)*user,assistant$"


@dataclass(frozen=True)
class Check:
    name: str
    expectation: str
    kwargs: dict[str, Any]
    why: str


def checks(cfg: ValidateConfig) -> list[Check]:
    """The suite, one named check per expectation, so reports speak in the user's terms."""
    return [
        Check("required_id", "ExpectColumnValuesToNotBeNull", {"column": "id"}, "every row has an id"),
        Check("required_source", "ExpectColumnValuesToNotBeNull", {"column": "source"}, "every row has a source"),
        Check(
            "required_messages",
            "ExpectColumnValuesToNotBeNull",
            {"column": "roles"},
            "every row has a list of {role, content} messages",
        ),
        Check("unique_id", "ExpectColumnValuesToBeUnique", {"column": "id"}, "ids are unique"),
        Check(
            "role_order",
            "ExpectColumnValuesToMatchRegex",
            {"column": "roles", "regex": ROLE_ORDER},
            "system only first, then user/assistant alternating, ending with the assistant",
        ),
        Check(
            "non_empty_turns",
            "ExpectColumnValuesToBeBetween",
            {"column": "min_turn_chars", "min_value": 1},
            "no turn is empty or whitespace",
        ),
        Check(
            "token_length",
            "ExpectColumnValuesToBeBetween",
            {"column": "n_tokens", "min_value": cfg.min_tokens, "max_value": cfg.max_tokens},
            f"{cfg.min_tokens}..{cfg.max_tokens} tokens with the base model's chat template",
        ),
        Check(
            "script",
            "ExpectColumnValuesToBeBetween",
            {"column": "script_fraction", "min_value": cfg.min_script_fraction},
            f"at least {cfg.min_script_fraction:.0%} of letters in {', '.join(cfg.allowed_scripts)}",
        ),
        Check(
            "forbidden_chars",
            "ExpectColumnValuesToNotMatchRegex",
            {"column": "text", "regex": cfg.forbidden_pattern},
            "no control or replacement characters",
        ),
    ]


_ASCII_LETTERS = re.compile(r"[A-Za-z]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


@functools.lru_cache(maxsize=65536)
def _script(char: str) -> str | None:
    """Script of a letter (first word of its Unicode name: LATIN, CYRILLIC, CJK, ...); None for non-letters."""
    return unicodedata.name(char, "UNKNOWN").split(" ", 1)[0] if char.isalpha() else None


def _script_fraction(text: str, allowed: tuple[str, ...]) -> float:
    """Share of letters in allowed scripts; ASCII letters are counted in C, the rest looked up once each."""
    ascii_letters = len(_ASCII_LETTERS.findall(text))
    scripts = [sc for c in _NON_ASCII.findall(text) if (sc := _script(c)) is not None]
    total = ascii_letters + len(scripts)
    if total == 0:
        return 1.0
    ok = (ascii_letters if "LATIN" in allowed else 0) + sum(1 for sc in scripts if sc in allowed)
    return ok / total


def describe(rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, cfg: ValidateConfig) -> pd.DataFrame:
    """One line of derived columns per row; malformed rows get nulls where a value cannot be derived."""
    import pandas as pd

    allowed = tuple(cfg.allowed_scripts)
    frame: list[dict[str, Any]] = []
    rendered: list[str] = []
    for row in rows:
        msgs = row.get("messages")
        good = (
            isinstance(msgs, list)
            and msgs
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs
            )
        )
        contents = [m["content"] for m in msgs] if good else []
        if good and isinstance(row.get("rejected"), str):
            contents.append(row["rejected"])
        text = "\n".join(contents)
        frame.append(
            {
                "id": row.get("id"),
                "source": row.get("source"),
                "roles": ",".join(m["role"] for m in msgs) if good else None,
                "min_turn_chars": min(len(c.strip()) for c in contents) if good else None,
                "script_fraction": _script_fraction(text, allowed),
                "text": text,
            }
        )
        rendered.append(_render(msgs, row.get("rejected"), tokenizer) if good else "")
    lengths = [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
    df = pd.DataFrame(frame)
    df["n_tokens"] = [n if r else None for n, r in zip(lengths, rendered, strict=True)]
    return df


def _render(msgs: list[dict[str, str]], rejected: str | None, tokenizer: PreTrainedTokenizerBase) -> str:
    """The longest text training will see: the conversation, or its rejected variant if longer."""
    convs = [msgs] if rejected is None else [msgs, [*msgs[:-1], {"role": "assistant", "content": rejected}]]
    try:
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in convs]
    except Exception:  # a template that rejects the role order; the role_order check reports the row
        texts = ["\n".join(m["content"] for m in c) for c in convs]
    return max(texts, key=len)


def run_suite(df: pd.DataFrame, suite_checks: list[Check]) -> dict[str, list[int]]:
    """Run the checks as a real GX suite; return the failing row indices per check."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)  # it forces INFO
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = ctx.data_sources.add_pandas("tunefold").add_dataframe_asset("records")
    definition = batch.add_batch_definition_whole_dataframe("all_rows")
    suite = gx.ExpectationSuite(name="tunefold_records")
    for check in suite_checks:
        suite.add_expectation(getattr(gxe, check.expectation)(**check.kwargs, meta={"check": check.name}))
    suite = ctx.suites.add(suite)
    validation = ctx.validation_definitions.add(gx.ValidationDefinition(name="records", data=definition, suite=suite))
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(name="validate", validation_definitions=[validation], result_format={"result_format": "COMPLETE"})
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": df})
    failing: dict[str, list[int]] = {c.name: [] for c in suite_checks}
    for run_result in outcome.run_results.values():
        for r in run_result.results:
            name = r.expectation_config.meta["check"]
            failing[name] = sorted(int(i) for i in (r.result.get("unexpected_index_list") or []))
    # Uniqueness flags every copy; the first occurrence of each id is kept.
    if failing.get("unique_id"):
        first: set[int] = set(df.drop_duplicates("id").index)
        failing["unique_id"] = [i for i in failing["unique_id"] if i not in first]
    return failing


def validate(
    cfg: ValidateConfig, records_path: Path, model_dir: Path, out_dir: Path, report_dir: Path
) -> dict[str, Any]:
    rows = _read_rows(records_path)
    if not rows:
        raise InputError(f"{records_path}: no records to validate")
    tokenizer = load_tokenizer(model_dir)
    df = describe(rows, tokenizer, cfg)
    suite_checks = checks(cfg)
    failing = run_suite(df, suite_checks)

    reasons: dict[int, list[str]] = {}
    for name, indices in failing.items():
        for i in indices:
            reasons.setdefault(i, []).append(name)
    clean = [row for i, row in enumerate(rows) if i not in reasons]
    quarantine = [
        {
            "row": i,
            "failed": reasons[i],
            "record": rows[i],
            "derived": {k: _plain(df.at[i, k]) for k in ("roles", "min_turn_chars", "n_tokens", "script_fraction")},
        }
        for i in sorted(reasons)
    ]
    with atomic_dir(out_dir) as tmp:  # clean and quarantine are replaced together or not at all
        write_jsonl(tmp / CLEAN, clean)
        write_jsonl(tmp / QUARANTINE, quarantine)

    fraction = len(quarantine) / len(rows)
    by_check = Counter(name for r in quarantine for name in r["failed"])
    report = {
        "rows": len(rows),
        "clean": len(clean),
        "quarantined": len(quarantine),
        "reject_fraction": round(fraction, 6),
        "max_reject_fraction": cfg.max_reject_fraction,
        "checks": [
            {
                "name": c.name,
                "expectation": c.expectation,
                "kwargs": c.kwargs,
                "why": c.why,
                "success": not failing[c.name],
                "failed_rows": failing[c.name],
            }
            for c in suite_checks
        ],
        "tokens": {
            "min": _plain(df["n_tokens"].min()),
            "max": _plain(df["n_tokens"].max()),
            "mean": round(float(df["n_tokens"].mean()), 1),
        },
    }
    write_json(report_dir / REPORT_JSON, report)
    write_text(report_dir / REPORT_MD, render_markdown(report, quarantine, out_dir / QUARANTINE))
    log.info(
        "validated %d rows: %d clean, %d quarantined (%s)",
        len(rows),
        len(clean),
        len(quarantine),
        ", ".join(f"{k} {v}" for k, v in by_check.most_common()) or "no failures",
    )
    if fraction > cfg.max_reject_fraction:
        detail = "; ".join(
            f"{name}: {n} rows (e.g. {', '.join(str(rows[i].get('source', f'row {i}')) for i in failing[name][:5])})"
            for name, n in by_check.most_common()
        )
        raise InputError(
            f"{len(quarantine)} of {len(rows)} rows ({fraction:.1%}) failed validation, above "
            f"validate.max_reject_fraction={cfg.max_reject_fraction}: {detail}. "
            f"Quarantined rows with reasons: {out_dir / QUARANTINE}; report: {report_dir / REPORT_MD}"
        )
    return {k: report[k] for k in ("rows", "clean", "quarantined", "reject_fraction")} | {
        "failed_by_check": dict(by_check),
        "tokens": report["tokens"],
    }


def _plain(value: Any) -> Any:
    """numpy/pandas scalars to JSON-ready Python values (NaN to None)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows as plain dicts: validation must see malformed rows too, not have them rejected by a parser."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: malformed JSON ({e.msg}); records files come from `ingest`") from e
            rows.append(row if isinstance(row, dict) else {"value": row})
    return rows


def render_markdown(report: dict[str, Any], quarantine: list[dict[str, Any]], quarantine_path: Path) -> str:
    lines = [
        "# Validation report",
        "",
        f"{report['rows']} rows: **{report['clean']} clean**, **{report['quarantined']} quarantined** "
        f"({report['reject_fraction']:.1%}; limit {report['max_reject_fraction']:.0%}). "
        "Tokens per row: min {min}, mean {mean}, max {max}.".format(**report["tokens"]),
        "",
        "| check | rule | result | failing rows |",
        "|---|---|---|---|",
    ]
    for c in report["checks"]:
        rows = ", ".join(map(str, c["failed_rows"][:20])) + (" …" if len(c["failed_rows"]) > 20 else "")
        lines.append(f"| {c['name']} | {c['why']} | {'pass' if c['success'] else 'FAIL'} | {rows} |")
    if quarantine:
        lines += [
            "",
            f"## Quarantined rows ({quarantine_path})",
            "",
            "| row | source | failed | start of text |",
            "|---|---|---|---|",
        ]
        for q in quarantine[:200]:
            rec = q["record"]
            msgs = rec.get("messages") if isinstance(rec.get("messages"), list) else []
            first = next((m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"), "")
            snippet = re.sub(r"\s+", " ", str(first or ""))[:60].replace("|", "\\|")
            lines.append(f"| {q['row']} | {rec.get('source', '')} | {', '.join(q['failed'])} | {snippet} |")
        if len(quarantine) > 200:
            lines.append(f"| … | {len(quarantine) - 200} more in the quarantine file | | |")
    return "\n".join(lines) + "\n"


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=Path, required=True, help="records.jsonl from ingest")
    p.add_argument("--model", type=Path, required=True, help="base model directory (for its tokenizer)")
    p.add_argument("--out", type=Path, required=True, help="directory for clean.jsonl and quarantine.jsonl")
    p.add_argument("--report", type=Path, required=True, help="directory for report.json and report.md")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return validate(ctx.params.validate_, args.records, args.model, args.out, args.report)


def main(argv: list[str] | None = None) -> int:
    return stage_main("validate", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
