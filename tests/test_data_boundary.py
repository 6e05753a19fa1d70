"""The data boundary on files the tests write as public datasets and broken scrapes write them: every row goes in
exactly as it is or is refused with its `file:line` and reason; nothing raises; counts reconcile."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import re
from pathlib import Path
from typing import Any

import pytest

from tasks.ingest import DUPLICATES, RECORDS, REJECTED, ingest, warn_untracked_sources
from tunefold.config import IngestConfig, SourceConfig
from tunefold.data.records import Record
from tunefold.errors import InputError
from tunefold.io import read_jsonl

H, A = "\n\nHuman: ", "\n\nAssistant: "


def cfg(*paths: Path, max_reject_fraction: float = 1.0, **kw: Any) -> IngestConfig:
    return IngestConfig(
        sources=[SourceConfig(path=str(p), **kw) for p in paths], dedupe="none", max_reject_fraction=max_reject_fraction
    )


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def records(out: Path) -> list[Record]:
    return [Record.model_validate(r) for r in read_jsonl(out / RECORDS)]


def reasons(out: Path) -> dict[int, str]:
    return {int(r["source"].rsplit(":", 1)[1]): r["reason"] for r in read_jsonl(out / REJECTED)}


def reconciles(m: dict[str, Any], out: Path) -> None:
    """rows in = rejected + converted; candidates = kept + duplicates; the files hold exactly those rows."""
    assert m["rows_read"] == m["rows_rejected"] + sum(m["shapes"].values())
    assert m["records_candidate"] == m["records_kept"] + m["duplicates_exact"] + m["duplicates_normalized"]
    assert len(read_jsonl(out / RECORDS)) == m["records_kept"]
    assert len(read_jsonl(out / REJECTED)) == m["rows_rejected"]
    assert len(read_jsonl(out / DUPLICATES)) == m["duplicates_exact"] + m["duplicates_normalized"]


def turns(rec: Record) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in rec.messages]


# --- preference layouts --------------------------------------------------------------------------------------

MULTI = [
    {"role": "user", "content": "How do I boil an egg?"},
    {"role": "assistant", "content": "Put it in boiling water for 9 minutes."},
    {"role": "user", "content": "And a soft one?"},
]
GOOD_ANSWER = {"role": "assistant", "content": "About 6 minutes."}
BAD_ANSWER = {"role": "assistant", "content": "Eggs cannot be soft."}


def test_preference_layouts_keep_every_turn(tmp_path: Path) -> None:
    rows = [
        # (a) strings
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."},
        # (b) prompt string = first user turn, whole multi-turn conversations (the common Hub layout)
        {"prompt": MULTI[0]["content"], "chosen": [*MULTI, GOOD_ANSWER], "rejected": [*MULTI, BAD_ANSWER]},
        # (b) prompt as messages, chosen/rejected only the answer
        {"prompt": MULTI, "chosen": [GOOD_ANSWER], "rejected": [BAD_ANSWER]},
        # (b) no prompt: whole conversations sharing everything but the answer (trl's implicit prompt)
        {"chosen": [*MULTI, GOOD_ANSWER], "rejected": [*MULTI, BAD_ANSWER]},
        # (b) prompt as messages beside whole conversations
        {"prompt": MULTI, "chosen": [*MULTI, GOOD_ANSWER], "rejected": [*MULTI, BAD_ANSWER]},
    ]
    src = jsonl(tmp_path / "prefs.jsonl", rows)
    m = ingest(cfg(src), tmp_path / "out")
    got = records(tmp_path / "out")
    assert m["rows_rejected"] == 0 and len(got) == 5
    assert turns(got[0]) == [("user", "Say hi"), ("assistant", "Hi!")] and got[0].rejected == "Go away."
    whole = [(t["role"], t["content"]) for t in [*MULTI, GOOD_ANSWER]]
    for rec in got[1:]:
        assert turns(rec) == whole and rec.rejected == BAD_ANSWER["content"]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (
            {"prompt": "How do I boil an egg?", "chosen": [*MULTI, GOOD_ANSWER], "rejected": [MULTI[0], BAD_ANSWER]},
            "chosen and rejected are different conversations: they differ at turn 2",
        ),
        (
            {"prompt": "Something else entirely", "chosen": [*MULTI, GOOD_ANSWER], "rejected": [*MULTI, BAD_ANSWER]},
            "prompt does not match the conversation",
        ),
        (
            {"prompt": MULTI[:1], "chosen": [*MULTI, GOOD_ANSWER], "rejected": [*MULTI, BAD_ANSWER]},
            "prompt does not match the conversation",
        ),
        ({"prompt": "Hi", "chosen": [*MULTI], "rejected": "No"}, "the last turn must be the assistant's answer"),
        ({"chosen": "Hi!", "rejected": "Bye."}, "missing field 'prompt': chosen/rejected are answer strings"),
        ({"chosen": f"{H}Hi{A}Hello", "rejected": "Bye."}, "one of chosen/rejected is a Human/Assistant transcript"),
        (
            {"chosen": f"{H}Hi{A}Hello{H}Bye{A}Ciao", "rejected": f"{H}Hi{A}Hey{H}Bye{A}No"},
            "differ at turn 2",
        ),
        ({"chosen": f"{H}Hi{H}Again{A}Hello", "rejected": f"{H}Hi{H}Again{A}No"}, "second Human turn in a row"),
        ({"prompt": "Hi", "chosen": "Hello"}, "missing field 'rejected'"),
        ({"prompt": f"{H}Hi{A}Hello{H}More", "chosen": " Yes", "rejected": " No"}, "empty 'Assistant:' turn"),
    ],
)
def test_preference_rows_that_do_not_agree_are_refused(tmp_path: Path, row: dict, reason: str) -> None:
    ok = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}
    src = jsonl(tmp_path / "p.jsonl", [ok, row])
    m = ingest(cfg(src), tmp_path / "out")
    assert m["rows_rejected"] == 1 and reason in reasons(tmp_path / "out")[2]
    reconciles(m, tmp_path / "out")


def _transcript(turn_texts: list[str]) -> str:
    return "".join((H if i % 2 == 0 else A) + t for i, t in enumerate(turn_texts))


def test_transcripts_split_into_exact_turns(tmp_path: Path) -> None:
    """Human/Assistant transcripts (the layout of a well-known harmlessness set), multi-turn, with the quirks of
    real rows: turn text holding 'Human:' mid-line, newlines, trailing spaces, an empty final answer."""
    convs = [
        (["What is 2+2?"], "4.", "5."),
        (["Tell me a joke.", "Why did the chicken cross the road?", "Why?"], "To get across.\n", "No idea "),
        (["Quote a play: Human: is a word here", "Sure.\nLine two", "Thanks  "], "You're welcome.", ""),
    ]
    rows = [{"chosen": _transcript([*p, c]), "rejected": _transcript([*p, r])} for p, c, r in convs]
    rows.append({"prompt": _transcript([*convs[1][0], ""]), "chosen": " " + convs[1][1], "rejected": " " + convs[1][2]})
    src = jsonl(tmp_path / "hh.jsonl", rows)
    m = ingest(cfg(src), tmp_path / "out")
    got = records(tmp_path / "out")
    assert m["rows_rejected"] == 0 and len(got) == len(rows)
    for rec, row, (prefix, chosen, rejected) in zip(got, rows, [*convs, convs[1]], strict=True):
        assert [m.content for m in rec.messages] == [*prefix, chosen] and rec.rejected == rejected
        assert [m.role for m in rec.messages] == ["user", "assistant"] * (len(prefix) // 2) + ["user", "assistant"]
        if "prompt" not in row:  # every turn is the source text: the transcript rebuilt from the record is the row
            assert _transcript([m.content for m in rec.messages]) == row["chosen"]
            assert _transcript([*[m.content for m in rec.prompt], rec.rejected or ""]) == row["rejected"]


# --- row-level problems never raise ---------------------------------------------------------------------------


def test_row_level_problems_are_rejected_rows_with_their_line(tmp_path: Path) -> None:
    good = json.dumps({"instruction": "Name a colour.", "output": "Blue"})
    lines = [
        good,
        '{"instruction": "Smile \\ud83d", "output": "ok"}',  # lone surrogate escape
        "[" * 100_000 + "]" * 100_000,  # nested 100k deep
        '{"instruction": "x", "output": "y", "id": ' + "9" * 5000 + "}",  # more digits than Python converts
        json.dumps({"instruction": "big", "output": "z" * 300_000}),  # over max_row_bytes below
        '{"instruction": "Unterminated',
        json.dumps({"instruction": "Keep me.", "output": "Kept.", "id": "row-7"}),
    ]
    src = tmp_path / "scraped.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    c = IngestConfig(sources=[SourceConfig(path=str(src))], max_reject_fraction=1.0, max_row_bytes=250_000)
    m = ingest(c, tmp_path / "out")
    why = reasons(tmp_path / "out")
    assert "lone surrogate ('\\ud83d')" in why[2] and why[2].startswith("instruction:")
    assert "nested too deeply" in why[3]
    assert "malformed JSON" in why[4]
    assert "over ingest.max_row_bytes (250000)" in why[5]
    assert why[6] == "malformed JSON: Unterminated string starting at (column 17)"
    assert [r.metadata.get("source_id") for r in records(tmp_path / "out")] == [None, "row-7"]
    reconciles(m, tmp_path / "out")


def test_json_array_rows_carry_their_line_and_fail_alone(tmp_path: Path) -> None:
    text = (
        '{"meta": {"v": 1}, "data": [\n'
        '  {"instruction": "First?", "output": "One."},\n'
        '  {"instruction": tru, "output": "x"},\n'
        '  {"instruction": "Smile \\ud83d", "output": "x"},\n'
        '  "not an object",\n'
        '  {"instruction": "Caf@", "output": "x"},\n'
        '  {"instruction": "Last?",\n   "output": "Two."}\n'
        "]}\n"
    )
    src = tmp_path / "rows.json"
    src.write_bytes(text.encode().replace(b"@", b"\xe9"))  # a Latin-1 byte in a UTF-8 file
    m = ingest(cfg(src), tmp_path / "out")
    got = records(tmp_path / "out")
    assert [r.source for r in got] == [f"{src}:2", f"{src}:7"]
    why = reasons(tmp_path / "out")
    assert set(why) == {3, 4, 5, 6}
    assert "malformed JSON" in why[3] and "lone surrogate" in why[4] and "got str" in why[5]
    assert why[6].startswith("instruction: invalid UTF-8 (byte 0xe9")
    reconciles(m, tmp_path / "out")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a", "output": "b"}\n {"instruction": "c"}]')
    with pytest.raises(InputError, match=re.escape(f"{bad}:2: malformed JSON: expected ',' or ']'")):
        ingest(cfg(bad), tmp_path / "out2")


# --- compressed sources --------------------------------------------------------------------------------------

ROWS = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(3)]


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    ("suffix", "pack"), [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress), (".zst", _zstd)]
)
def test_compressed_sources_read_by_suffix(tmp_path: Path, suffix: str, pack: Any) -> None:
    payload = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    src = tmp_path / f"rows.jsonl{suffix}"
    src.write_bytes(pack(payload))
    buf = io.StringIO()
    csv.DictWriter(buf, ["instruction", "output"]).writeheader()
    csv.DictWriter(buf, ["instruction", "output"]).writerows(ROWS)
    (tmp_path / f"rows.csv{suffix}").write_bytes(pack(buf.getvalue().encode()))
    (tmp_path / f"rows.json{suffix}").write_bytes(pack(json.dumps(ROWS).encode()))
    paths = [src, tmp_path / f"rows.csv{suffix}", tmp_path / f"rows.json{suffix}"]
    m = ingest(cfg(*paths), tmp_path / "out")
    assert m["rows_read"] == 9 and m["rows_rejected"] == 0
    got = records(tmp_path / "out")
    lines = {paths[0]: (1, 2, 3), paths[1]: (2, 3, 4), paths[2]: (1, 1, 1)}  # CSV: after its header; JSON: one line
    assert [r.source for r in got] == [f"{p}:{i}" for p in paths for i in lines[p]]
    assert [turns(r) for r in got] == [[("user", r["instruction"]), ("assistant", r["output"])] for r in ROWS] * 3


def test_compression_the_name_does_not_match_is_a_clear_error(tmp_path: Path) -> None:
    packed = gzip.compress(b'{"instruction": "a", "output": "b"}\n')
    hidden = tmp_path / "rows.jsonl"
    hidden.write_bytes(packed)
    with pytest.raises(InputError, match=r"gzip-compressed but its name does not say so; name it rows\.jsonl\.gz"):
        ingest(cfg(hidden, format="jsonl"), tmp_path / "out")
    fake = tmp_path / "rows.jsonl.gz"
    fake.write_bytes(b'{"instruction": "a", "output": "b"}\n')
    with pytest.raises(InputError, match=r"named \.gz but is not gzip-compressed"):
        ingest(cfg(fake), tmp_path / "out")
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS * 50))[:-40])
    m = ingest(cfg(truncated), tmp_path / "out")
    last = read_jsonl(tmp_path / "out" / REJECTED)[-1]
    assert "compressed file cannot be read from here on" in last["reason"] and m["records_kept"] > 0


# --- CSV ------------------------------------------------------------------------------------------------------


def test_csv_cells_are_text_with_true_line_numbers(tmp_path: Path) -> None:
    src = tmp_path / "data.csv"
    src.write_bytes(
        b"instruction,input,output\n"
        b'"Parse this list","[1, 2, 3]","{""sum"": 6}"\n'  # line 2: cells that look like JSON stay text
        b'"Write a poem\nin two lines",,"Roses\nare red"\n'  # lines 3-5: one row
        b"Bad byte caf\xe9,,x\n"  # line 6: rejected alone
        b"Missing a cell,only two\n"  # line 7
        b'"broken"quote,,x\n'  # line 8
        b"Last one,,Still read\n"  # line 9
    )
    m = ingest(cfg(src), tmp_path / "out")
    got = records(tmp_path / "out")
    assert [r.source for r in got] == [f"{src}:2", f"{src}:3", f"{src}:9"]
    assert turns(got[0]) == [("user", "Parse this list\n\n[1, 2, 3]"), ("assistant", '{"sum": 6}')]
    assert turns(got[1]) == [("user", "Write a poem\nin two lines"), ("assistant", "Roses\nare red")]
    why = reasons(tmp_path / "out")
    assert set(why) == {6, 7, 8}
    assert "invalid UTF-8 (byte 0xe9)" in why[6]
    assert "2 cells but the header has 3 (missing ['output'])" in why[7]
    assert "malformed CSV" in why[8]
    reconciles(m, tmp_path / "out")


def test_csv_json_columns_only_when_the_source_says_so(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "Capital of Italy?"}, {"role": "assistant", "content": "Rome"}]
    src = tmp_path / "chat.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["messages", "id"], [json.dumps(msgs), "42"], ["[not json", "43"]])
    m = ingest(cfg(src, json_columns=["messages"]), tmp_path / "out")
    got = records(tmp_path / "out")
    assert turns(got[0]) == [("user", "Capital of Italy?"), ("assistant", "Rome")]
    assert got[0].metadata["source_id"] == "42"
    assert "messages: not JSON" in reasons(tmp_path / "out")[3]
    reconciles(m, tmp_path / "out")
    with pytest.raises(InputError, match=r"json_columns \['turns'\] are not columns"):
        ingest(cfg(src, json_columns=["turns"]), tmp_path / "out2")


# --- sources that mostly fail ----------------------------------------------------------------------------------


def test_a_source_that_mostly_fails_stops_the_stage_and_writes_nothing(tmp_path: Path) -> None:
    good = jsonl(tmp_path / "good.jsonl", ROWS)
    hh = jsonl(tmp_path / "hh.jsonl", [{"chosen": "Hi!", "rejected": "Bye."}] * 3 + ROWS[:1])
    out = tmp_path / "out"
    ingest(cfg(good), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    c = IngestConfig(sources=[SourceConfig(path=str(good)), SourceConfig(path=str(hh), name="hh")])
    with pytest.raises(InputError) as err:
        ingest(c, out)
    msg = str(err.value)
    assert f"source hh ({hh}): 3 of 4 rows (75.0%) rejected, above ingest.max_reject_fraction=0.2" in msg
    assert "3 x missing field 'prompt'" in msg and "(e.g. line 1, 2, 3)" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # outputs untouched
    failed = read_jsonl(tmp_path / "out.failed" / REJECTED)
    assert [r["source"] for r in failed] == [f"{hh}:{i}" for i in (1, 2, 3)] and str(tmp_path / "out.failed") in msg
    ingest(cfg(good), out)
    assert not (tmp_path / "out.failed").exists()  # a later success clears the failure report


def test_an_empty_or_all_rejected_source_fails_whatever_its_neighbours(tmp_path: Path) -> None:
    good = jsonl(tmp_path / "good.jsonl", ROWS * 20)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    c = IngestConfig(
        sources=[SourceConfig(path=str(good), name="shared"), SourceConfig(path=str(empty), name="shared")],
        max_reject_fraction=1.0,
    )
    with pytest.raises(InputError, match=re.escape(f"source shared ({empty}) is empty")):
        ingest(c, tmp_path / "out")
    bad = jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    c = IngestConfig(sources=[SourceConfig(path=str(good)), SourceConfig(path=str(bad))], max_reject_fraction=1.0)
    with pytest.raises(InputError, match="all 1 rows rejected: 1 x unrecognised row shape"):
        ingest(c, tmp_path / "out")


def test_falsy_values_are_kept_or_refused_never_dropped(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Repeat the input.", "input": "0", "output": "0"},
        {"instruction": "Repeat the input.", "input": 0, "output": "0"},
        {"instruction": "Repeat the input.", "input": False, "output": "false"},
        {"instruction": "No input here.", "input": None, "output": "Fine.", "id": 0},
    ]
    m = ingest(cfg(jsonl(tmp_path / "f.jsonl", rows)), tmp_path / "out")
    got = records(tmp_path / "out")
    assert turns(got[0])[0] == ("user", "Repeat the input.\n\n0")
    assert got[1].metadata["source_id"] == 0 and turns(got[1])[0] == ("user", "No input here.")
    why = reasons(tmp_path / "out")
    assert why == {2: "input: expected a string, got int", 3: "input: expected a string, got bool"}
    reconciles(m, tmp_path / "out")


def test_untracked_source_warned_from_the_stage_itself(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "dvc.yaml").write_text("stages:\n  ingest:\n    cmd: x\n    deps:\n      - data/sample\n")
    c = IngestConfig(sources=[SourceConfig(path="data/sample/a.jsonl"), SourceConfig(path="elsewhere/b.jsonl")])
    with caplog.at_level("WARNING", logger="tunefold"):
        assert warn_untracked_sources(c, tmp_path / "dvc.yaml") == ["elsewhere/b.jsonl"]
    assert "source elsewhere/b.jsonl is not a dep of stage ingest" in caplog.text


def test_whole_file_problems_are_errors_naming_the_file(tmp_path: Path) -> None:
    cut_json = tmp_path / "rows.json.gz"
    cut_json.write_bytes(gzip.compress(json.dumps(ROWS * 40).encode())[:-40])
    with pytest.raises(InputError, match=re.escape(f"{cut_json}: the compressed file cannot be read: EOFError")):
        ingest(cfg(cut_json), tmp_path / "out")
    blank_header = tmp_path / "blank.csv"
    blank_header.write_text("\ninstruction,output\na,b\n")
    with pytest.raises(InputError, match=re.escape(f"{blank_header}:1: the first line is empty")):
        ingest(cfg(blank_header), tmp_path / "out")
    cut_header = tmp_path / "cut.csv.bz2"
    cut_header.write_bytes(bz2.compress(b"instruction,output\n" + b"a,b\n" * 100)[:30])
    with pytest.raises(InputError, match=re.escape(f"{cut_header}:1: the header cannot be read")):
        ingest(cfg(cut_header), tmp_path / "out")


def test_odd_lines_and_odd_fields_are_rows_with_reasons(tmp_path: Path) -> None:
    src = tmp_path / "odd.jsonl"
    lines = [
        b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode(),  # a byte-order mark before the first row
        b"\x0c",  # a form feed is not JSON whitespace: a malformed row, not a blank line
        "\u00a0".encode(),  # nor is a no-break space
        b"   ",  # a blank line
        json.dumps({"instruction": "X", "instances": [{"instruction": "Y", "input": "", "output": "o"}]}).encode(),
        json.dumps({"instruction": "Say nothing.", "output": []}).encode(),
        json.dumps(ROWS[1]).encode(),
    ]
    src.write_bytes(b"\n".join(lines) + b"\n")
    m = ingest(cfg(src), tmp_path / "out")
    assert [r.source for r in records(tmp_path / "out")] == [f"{src}:1", f"{src}:7"]
    why = reasons(tmp_path / "out")
    assert set(why) == {2, 3, 5, 6}
    assert why[2].startswith("malformed JSON") and why[3].startswith("malformed JSON")
    assert why[5] == "instances[0]: has its own instruction; an instance holds input and output"
    assert why[6] == "output: expected a string, got list"
    reconciles(m, tmp_path / "out")


def test_text_that_starts_like_a_magic_number_is_still_text(tmp_path: Path) -> None:
    """bz2's magic is "BZh" and a block-size digit: a CSV whose first column is named "BZh" is a CSV."""
    src = tmp_path / "bzh.csv"
    src.write_text("BZh,instruction,output\nx,Say hi.,Hi!\n")
    m = ingest(cfg(src), tmp_path / "out")
    assert m["records_kept"] == 1 and turns(records(tmp_path / "out")[0]) == [("user", "Say hi."), ("assistant", "Hi!")]
    short = tmp_path / "short.jsonl"
    short.write_bytes(b"BZh")
    with pytest.raises(InputError, match="all 1 rows rejected: 1 x malformed JSON"):
        ingest(cfg(short), tmp_path / "out2")
