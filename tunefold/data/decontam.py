"""Decontamination: no training row may contain an evaluation question.

A row is contaminated when one of its messages shares an n-gram of words (13 by default, the n lm-eval-harness's
decontamination uses) with an evaluation question, or, for a question shorter than n words, when a message is
that question once case, punctuation and spacing are normalised. Words are lower-cased runs of letters and
digits, so reformatting does not hide a copy. The matched question's set and id are reported with the row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefold.data.records import Record
from tunefold.errors import InputError

if TYPE_CHECKING:
    from tunefold.config import EvalConfig, HoldoutConfig

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.casefold())


@dataclass(frozen=True)
class EvalItem:
    """One evaluation question (a turn of a multi-turn one): where it comes from and its text."""

    set: str
    id: str
    text: str


@dataclass(frozen=True)
class Match:
    item: EvalItem
    how: str  # "13-gram" or "exact"
    overlap: str  # the shared words


class EvalIndex:
    """Every n-gram of every evaluation question, and the short questions whole, for constant-time lookups."""

    def __init__(self, items: list[EvalItem], n: int) -> None:
        self.n = n
        self.items = items
        self.grams: dict[tuple[str, ...], EvalItem] = {}
        self.exact: dict[str, EvalItem] = {}
        for item in items:
            w = words(item.text)
            if len(w) < n:
                self.exact.setdefault(" ".join(w), item)
            for i in range(len(w) - n + 1):
                self.grams.setdefault(tuple(w[i : i + n]), item)

    def match(self, text: str) -> Match | None:
        w = words(text)
        whole = self.exact.get(" ".join(w))
        if whole is not None and w:
            return Match(whole, "exact", " ".join(w))
        for i in range(len(w) - self.n + 1):
            gram = tuple(w[i : i + self.n])
            if gram in self.grams:
                return Match(self.grams[gram], f"{self.n}-gram", " ".join(gram))
        return None

    def check(self, record: Record) -> Match | None:
        """The first message of the record (chosen and rejected answers included) that contains a question."""
        texts = [m.content for m in record.messages] + ([record.rejected] if record.rejected else [])
        return next((m for t in texts if (m := self.match(t)) is not None), None)


def quarantine(records: list[Record], index: EvalIndex) -> tuple[list[Record], list[dict[str, Any]]]:
    """(clean records, one row per contaminated record: the record, where it came from, what it matched)."""
    clean, dropped = [], []
    for r in records:
        m = index.check(r)
        if m is None:
            clean.append(r)
            continue
        why = f"contains {m.item.set} question {m.item.id} ({m.how} match: {m.overlap!r})"
        dropped.append(
            {"record": r.model_dump(), "where": r.source, "set": m.item.set, "question": m.item.id, "reason": why}
        )
    return clean, dropped


def _extra_items(path: Path) -> list[EvalItem]:
    """Questions of a JSONL eval set given by the user: `turns` (a list), or `instruction`, `question` or
    `prompt`; the id from `question_id`, `id` or `idx`, else the line number."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise InputError(f"{path}:{n}: not JSON ({e})") from e
        key = str(next((row[k] for k in ("question_id", "id", "idx") if k in row), n))
        texts = row.get("turns") or [row.get("instruction") or row.get("question") or row.get("prompt")]
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise InputError(f"{path}:{n}: no question text (turns, instruction, question or prompt)")
        out += [
            EvalItem(path.stem, f"{key}" if len(texts) == 1 else f"{key}:turn{t}", x) for t, x in enumerate(texts, 1)
        ]
    return out


def eval_items(cfg: EvalConfig, extra: list[str]) -> list[EvalItem]:
    """The questions of every benchmark the pipeline evaluates on (MT-Bench turns, FLASK and FLASK-HARD
    instructions) and of the `extra` JSONL sets."""
    from tunefold.eval.flask import load_instances
    from tunefold.eval.mtbench import load_questions

    items = [
        EvalItem("mt_bench", f"{q.question_id}:turn{t}", text)
        for q in load_questions(Path(cfg.mt_bench.questions))
        for t, text in enumerate(q.turns, 1)
    ]
    for name, path in (("flask", cfg.flask.data), ("flask_hard", cfg.flask.hard)):
        if path:
            items += [EvalItem(name, str(i.idx), i.instruction) for i in load_instances(Path(path))]
    for path in eval_set_files(extra):
        items += _extra_items(path)
    return items


def eval_set_files(paths: list[str]) -> list[Path]:
    """`holdout.eval_sets` as files: a JSONL file as given, a folder as every *.jsonl in it (sorted). A folder can
    be a DVC dependency of the stages that decontaminate, so editing a set in it re-runs them."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path}: evaluation set for decontamination not found (holdout.eval_sets)")
        files += sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    return files


def eval_index(cfg: HoldoutConfig, eval_cfg: EvalConfig) -> EvalIndex | None:
    """The index of every evaluation question the project knows; None with `holdout.decontaminate` off."""
    return EvalIndex(eval_items(eval_cfg, cfg.eval_sets), cfg.ngram) if cfg.decontaminate else None


def decontaminate(
    records: list[Record], cfg: HoldoutConfig, eval_cfg: EvalConfig
) -> tuple[list[Record], list[dict[str, Any]]]:
    """`quarantine` against every evaluation set the project knows (nothing, with `holdout.decontaminate` off)."""
    index = eval_index(cfg, eval_cfg) if records else None
    return quarantine(records, index) if index is not None else (records, [])
