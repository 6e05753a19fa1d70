"""The Great Expectations suite: each check catches its rows, counts reconcile, the reject limit fails loudly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.validate import CLEAN, QUARANTINE, REPORT_JSON, REPORT_MD, validate
from tunefold.config import ValidateConfig
from tunefold.data.records import Message, make_record
from tunefold.errors import InputError
from tunefold.io import read_jsonl, write_jsonl


def rec(*turns: tuple[str, str], source: str = "t:1", **kw) -> dict:
    return make_record([Message(role=r, content=c) for r, c in turns], source, **kw).model_dump(exclude_none=True)


GOOD = [rec(("user", f"What is {i} plus {i}?"), ("assistant", f"{i} plus {i} is {2 * i}.")) for i in range(6)]
BAD = {
    "role_order": rec(
        ("assistant", "I speak first, which is wrong."), ("user", "Indeed it is wrong here."), source="bad.jsonl:7"
    ),
    "system_not_first": rec(("user", "Hello there, how are you?"), ("system", "late system"), ("assistant", "Fine.")),
    "non_empty_turns": rec(("user", "   "), ("assistant", "An answer to nothing at all.")),
    "token_length": rec(("user", "Hi"), ("assistant", "Yo")),
    "script": rec(("user", "Что такое фотосинтез и зачем он нужен?"), ("assistant", "Это процесс в растениях.")),
    "forbidden_chars": rec(("user", "Explain this \x07 bell character please."), ("assistant", "It rings a bell.")),
}
MISSING_ID = {
    "source": "t:9",
    "messages": [
        {"role": "user", "content": "No id on this row, sadly."},
        {"role": "assistant", "content": "Then it is quarantined."},
    ],
}


def run(tmp_path: Path, rows: list[dict], base_model: Path, **cfg) -> dict:
    write_jsonl(tmp_path / "records.jsonl", rows)
    config = ValidateConfig(min_tokens=cfg.pop("min_tokens", 40), **cfg)
    return validate(config, tmp_path / "records.jsonl", base_model, tmp_path / "out", tmp_path / "report")


def test_each_check_quarantines_its_rows(tmp_path: Path, base_model: Path) -> None:
    rows = [*GOOD, *BAD.values(), MISSING_ID, GOOD[0]]  # the last is a duplicate id
    m = run(tmp_path, rows, base_model, max_reject_fraction=1.0)
    quarantine = read_jsonl(tmp_path / "out" / QUARANTINE)
    failed = {q["row"]: q["failed"] for q in quarantine}
    n = len(GOOD)
    assert failed[n] == ["role_order"]
    assert failed[n + 1] == ["role_order"]
    assert "non_empty_turns" in failed[n + 2]
    assert failed[n + 3] == ["token_length"]
    assert failed[n + 4] == ["script"]
    assert failed[n + 5] == ["forbidden_chars"]
    assert failed[n + 6] == ["required_id"]
    assert failed[len(rows) - 1] == ["unique_id"]  # the first copy stays clean
    assert 0 not in failed
    clean = read_jsonl(tmp_path / "out" / CLEAN)
    assert len(clean) + len(quarantine) == len(rows) == m["rows"]
    assert clean == GOOD
    report = json.loads((tmp_path / "report" / REPORT_JSON).read_text())
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["script"]["failed_rows"] == [n + 4] and by_name["required_source"]["success"]
    md = (tmp_path / "report" / REPORT_MD).read_text()
    assert "| script |" in md and "FAIL" in md and str(tmp_path / "out" / QUARANTINE) in md


def test_reject_limit_fails_with_counts_and_quarantine_path(tmp_path: Path, base_model: Path) -> None:
    rows = [*GOOD[:2], BAD["script"], BAD["role_order"], BAD["token_length"]]
    with pytest.raises(InputError) as err:
        run(tmp_path, rows, base_model, max_reject_fraction=0.5)
    msg = str(err.value)
    assert "3 of 5 rows (60.0%)" in msg and "validate.max_reject_fraction=0.5" in msg
    assert "role_order: 1 rows (e.g. bad.jsonl:7)" in msg and "script: 1 rows" in msg
    assert str(tmp_path / "out" / QUARANTINE) in msg
    assert len(read_jsonl(tmp_path / "out" / QUARANTINE)) == 3  # written before failing


def test_configured_scripts_and_token_bounds(tmp_path: Path, base_model: Path) -> None:
    m = run(tmp_path, [*GOOD, BAD["script"]], base_model, allowed_scripts=["latin", "cyrillic"], max_tokens=10_000)
    assert m["quarantined"] == 0
    m = run(tmp_path, GOOD, base_model, min_tokens=1, max_tokens=5, max_reject_fraction=1.0)
    assert m["quarantined"] == len(GOOD) and m["failed_by_check"] == {"token_length": len(GOOD)}


def test_preference_rows_measure_the_longer_answer(tmp_path: Path, base_model: Path) -> None:
    long = " ".join(["word"] * 400)
    row = rec(("user", "Give a short answer please."), ("assistant", "Sure, here it is."), rejected=long)
    m = run(tmp_path, [row], base_model, max_tokens=200, max_reject_fraction=1.0)
    assert m["failed_by_check"] == {"token_length": 1}
