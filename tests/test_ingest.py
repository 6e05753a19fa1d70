"""Ingestion of every supported format and row shape, duplicates, and each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.ingest import DUPLICATES, RECORDS, REJECTED, ingest
from tunefold.config import IngestConfig, SourceConfig
from tunefold.data.records import Record, content_id
from tunefold.errors import InputError
from tunefold.io import read_jsonl

ALPACA = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"}]}
OPENAI = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
    ]
}
PREFERENCE = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}
SEED = {
    "instruction": "Name a colour.",
    "instances": [{"input": "", "output": "Blue"}, {"input": "warm", "output": "Red"}],
}


def cfg(*paths: Path, dedupe: str = "normalized", max_reject_fraction: float = 0.2, **kw) -> IngestConfig:
    return IngestConfig(
        sources=[SourceConfig(path=str(p), **kw) for p in paths], dedupe=dedupe, max_reject_fraction=max_reject_fraction
    )


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def records(out: Path) -> list[Record]:
    return [Record.model_validate(r) for r in read_jsonl(out / RECORDS)]


def test_every_shape_becomes_one_schema(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "mixed.jsonl", [json.dumps(r) for r in (ALPACA, SHAREGPT, OPENAI, PREFERENCE, SEED)])
    m = ingest(cfg(src), tmp_path / "out")
    recs = records(tmp_path / "out")
    assert m["shapes"] == {"messages": 1, "preference": 1, "self_instruct": 1, "sharegpt": 1, "alpaca": 1}
    assert len(recs) == 6  # the seed task has two instances
    by_first = {r.messages[-2].content if len(r.messages) > 1 else "": r for r in recs}
    assert [m.role for m in by_first["Capital of France?"].messages] == ["system", "user", "assistant"]
    assert by_first["Capital of France?"].response == "Paris."
    assert by_first["Say hi"].rejected == "Go away." and by_first["Say hi"].response == "Hi!"
    assert by_first["Name a colour.\n\nwarm"].response == "Red"
    assert all(r.id == content_id(r.messages, r.rejected) for r in recs)
    assert recs[0].source == f"{src}:1"


def test_formats_json_csv_parquet_hf(tmp_path: Path) -> None:
    import pandas as pd
    from datasets import Dataset, DatasetDict

    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(4)]
    (tmp_path / "a.json").write_text(json.dumps(rows[:1]))
    pd.DataFrame(rows[1:2]).to_csv(tmp_path / "b.csv", index=False)
    pd.DataFrame(rows[2:3]).to_parquet(tmp_path / "c.parquet")
    DatasetDict({"train": Dataset.from_list(rows[3:4])}).save_to_disk(str(tmp_path / "d"))
    csv_msgs = tmp_path / "e.csv"
    pd.DataFrame(
        [{"messages": json.dumps([*OPENAI["messages"][1:2], {"role": "assistant", "content": "Rome"}])}]
    ).to_csv(csv_msgs, index=False)
    sources = [SourceConfig(path=str(tmp_path / n)) for n in ("a.json", "b.csv", "c.parquet", "d")]
    sources.append(SourceConfig(path=str(csv_msgs), json_columns=["messages"]))
    m = ingest(IngestConfig(sources=sources), tmp_path / "out")
    got = sorted(r.messages[0].content for r in records(tmp_path / "out"))
    assert got == ["Capital of France?", "Question 0?", "Question 1?", "Question 2?", "Question 3?"]
    assert m["rows_read"] == 5 and m["rows_rejected"] == 0


def test_duplicates_removed_and_counted(tmp_path: Path) -> None:
    a = {"instruction": "Name a fruit.", "output": "Apple"}
    spaced = {"instruction": "  name   a FRUIT. ", "output": "apple"}
    src = write_lines(tmp_path / "d.jsonl", [json.dumps(x) for x in (a, a, spaced, ALPACA)])
    m = ingest(cfg(src), tmp_path / "out")
    assert (m["duplicates_exact"], m["duplicates_normalized"], m["records_kept"]) == (1, 1, 2)
    dups = read_jsonl(tmp_path / "out" / DUPLICATES)
    assert {d["kind"] for d in dups} == {"exact", "normalized"}
    assert all(d["duplicate_of"] == records(tmp_path / "out")[0].id for d in dups)
    m2 = ingest(cfg(src, dedupe="exact"), tmp_path / "out2")
    assert m2["records_kept"] == 3


def test_bad_rows_are_quarantined_and_valid_rows_kept(tmp_path: Path) -> None:
    lines: list[str | bytes] = [
        json.dumps(ALPACA),
        '{"instruction": "broken", "output": ',  # malformed JSON
        json.dumps({"instruction": 42, "output": "x"}),  # wrong type
        json.dumps({"instruction": "No answer here"}),  # missing field
        json.dumps({"conversations": [{"from": "robot", "value": "beep"}]}),  # unknown role
        b'{"instruction": "caf\xe9", "output": "x"}',  # bad UTF-8
        json.dumps(["not", "an", "object"]),
        json.dumps({"text": "unknown shape"}),
        json.dumps(SHAREGPT),
    ]
    src = write_lines(tmp_path / "bad.jsonl", lines)
    m = ingest(cfg(src, max_reject_fraction=1.0), tmp_path / "out")
    rejected = read_jsonl(tmp_path / "out" / REJECTED)
    reasons = {r["source"].rsplit(":", 1)[1]: r["reason"] for r in rejected}
    assert set(reasons) == {"2", "3", "4", "5", "6", "7", "8"}
    assert "malformed JSON" in reasons["2"]
    assert "instruction: expected a string, got int" in reasons["3"]
    assert "missing field 'output'" in reasons["4"]
    assert "unknown role name 'robot'" in reasons["5"]
    assert "invalid UTF-8" in reasons["6"]
    assert "expected a JSON object" in reasons["7"]
    assert "unrecognised row shape" in reasons["8"]
    assert all(r["raw"] for r in rejected)
    assert m["records_kept"] == 2
    # counts reconcile: every row read is either rejected or converted; every candidate kept or a duplicate
    assert m["rows_read"] == len(lines) == m["rows_rejected"] + sum(m["shapes"].values())
    assert m["records_candidate"] == m["records_kept"] + m["duplicates_exact"] + m["duplicates_normalized"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "does not exist"),
        ("empty.jsonl", "", "is empty"),
        ("data.txt", "hello", "unsupported format '.txt'"),
        (
            "broken.json",
            '[{"instruction": "x", "output": "y"}\n {"instruction": "z"}]',
            "broken.json:2: malformed JSON",
        ),
    ],
)
def test_source_level_errors_name_the_file(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        ingest(cfg(path), tmp_path / "out")
    assert str(path) in str(err.value)


def test_all_rows_bad_fails_but_writes_quarantine(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "x.jsonl", ["{oops", json.dumps({"text": 1})])
    with pytest.raises(InputError, match="all 2 rows rejected"):
        ingest(cfg(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert len(read_jsonl(tmp_path / "out.failed" / REJECTED)) == 2


def test_ids_are_stable_across_sources_and_runs(tmp_path: Path) -> None:
    a = write_lines(tmp_path / "a.jsonl", [json.dumps(ALPACA)])
    (tmp_path / "b.json").write_text(json.dumps([ALPACA]))
    ingest(cfg(a), tmp_path / "o1")
    ingest(cfg(tmp_path / "b.json"), tmp_path / "o2")
    assert records(tmp_path / "o1")[0].id == records(tmp_path / "o2")[0].id
