"""Decontamination and the held-out split: a planted benchmark question is quarantined with its id, however it is
reformatted; the split keeps every prompt on one side, follows the strata and is the same for the same seed; the
stage's counts reconcile."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tasks.holdout import main as holdout_main
from tasks.holdout import stratum
from tunefold.config import EvalConfig
from tunefold.data.decontam import EvalIndex, EvalItem, eval_items, quarantine, words
from tunefold.data.records import Message, Record, make_record
from tunefold.data.subsets import holdout_split, prompt_key, unique_conversations, without_heldout
from tunefold.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def rec(user: str, answer: str = "Sure.", rejected: str | None = None, source: str = "d.jsonl:1", **meta) -> Record:
    msgs = [Message(role="user", content=user), Message(role="assistant", content=answer)]
    return make_record(msgs, source, rejected=rejected, metadata=meta)


def test_a_planted_benchmark_question_is_quarantined_with_its_id() -> None:
    items = eval_items(EvalConfig(), [])  # the shipped MT-Bench and FLASK files, read as the evaluation reads them
    index = EvalIndex(items, 13)
    q2 = "Write a four-sentence story about a lighthouse keeper who finds a message in a bottle."
    assert EvalItem("mt_bench", "2:turn1", q2) in items
    planted = rec(f"Here is a task for you. {q2.upper().replace(',', '')} Keep it short.", source="mine.jsonl:7")
    in_answer = rec("Give me an example prompt.", f"For example: '{q2}'")
    short = rec("  explain WHY the moon shows phases ")  # a FLASK instruction of 6 words: whole-message match
    near = rec("Explain why the Moon shows phases, and why eclipses are rare.")  # not the question: kept
    clean = rec("Write a haiku about autumn leaves falling in a quiet park.")
    kept, dropped = quarantine([planted, in_answer, short, near, clean], index)
    assert kept == [near, clean]
    assert [(d["set"], d["question"], d["where"]) for d in dropped] == [
        ("mt_bench", "2:turn1", "mine.jsonl:7"),
        ("mt_bench", "2:turn1", "d.jsonl:1"),
        ("flask", "0", "d.jsonl:1"),
    ]
    assert "13-gram match" in dropped[0]["reason"] and "exact match" in dropped[2]["reason"]
    # a pair's rejected answer counts too; 12 shared words are not 13
    assert EvalIndex(items, 13).check(rec("Hi.", "Hello.", rejected=q2)) is not None
    twelve = " ".join(words(q2)[:12])
    assert EvalIndex(items, 13).check(rec(f"Note: {twelve}")) is None


def test_a_folder_of_eval_sets_is_read_set_by_set(tmp_path: Path) -> None:
    """`holdout.eval_sets` takes folders (every *.jsonl in them; the shipped data/eval_sets is a DVC dependency of
    the stages that decontaminate) as well as files; a set that is not there is a clear error."""
    folder = tmp_path / "sets"
    folder.mkdir()
    question = "Describe the migration route of the arctic tern across both hemispheres in one paragraph."
    (folder / "mine.jsonl").write_text(json.dumps({"id": "q7", "prompt": question}) + "\n")
    (folder / "notes.txt").write_text("not an evaluation set")
    items = eval_items(EvalConfig(), [str(folder)])
    assert EvalItem("mine", "q7", question) in items
    assert len(items) == len(eval_items(EvalConfig(), [])) + 1
    _, dropped = quarantine([rec(f"Please: {question}")], EvalIndex(items, 13))
    assert (dropped[0]["set"], dropped[0]["question"]) == ("mine", "q7")
    assert eval_items(EvalConfig(), [str(ROOT / "data/eval_sets")]) == eval_items(EvalConfig(), [])  # shipped empty
    with pytest.raises(InputError, match="not found"):
        eval_items(EvalConfig(), [str(tmp_path / "nope")])


def test_the_split_keeps_each_prompt_on_one_side_and_follows_the_strata() -> None:
    records = []
    for i in range(60):
        records.append(rec(f"Alpaca question number {i}?", source=f"a.jsonl:{i}", task_type="qa"))
    for i in range(30):
        records.append(rec(f"Code task {i}: reverse a list.", source=f"c.jsonl:{i}", task_type="coding"))
    for i in range(10):  # preference pairs whose prompt is also an SFT row, once re-spaced and re-cased
        records.append(rec(f"Pair prompt {i}?", "Good.", rejected="Bad.", source=f"p.jsonl:{i}", task_type="qa"))
        records.append(rec(f"  PAIR prompt   {i}?", "Fine.", source=f"s.jsonl:{i}", task_type="qa"))
    split = holdout_split(records, 0.2, 5, seed=3, stratum=stratum)
    assert len(split.train) + len(split.val) == len(records)
    train_keys, val_keys = {prompt_key(r) for r in split.train}, {prompt_key(r) for r in split.val}
    assert not train_keys & val_keys and not {r.id for r in split.train} & {r.id for r in split.val}
    groups = 60 + 30 + 10  # the pair and its re-cased SFT twin are one group
    assert len(val_keys) == round(0.2 * groups)
    held = Counter(stratum(r) for r in split.val)
    assert held["a.jsonl|qa|sft"] == 12 and held["c.jsonl|coding|sft"] == 6  # 20% of each stratum's groups
    assert held["p.jsonl|qa|pair"] == held["s.jsonl|qa|sft"] == 2  # 20% of the pairs, each with its SFT twin
    again = holdout_split(list(reversed(records)), 0.2, 5, seed=3, stratum=stratum)
    assert {r.id for r in again.val} == {r.id for r in split.val}  # the seed, not the order, decides
    assert {r.id for r in holdout_split(records, 0.2, 5, seed=4, stratum=stratum).val} != {r.id for r in split.val}
    tiny = holdout_split(records[:20], 0.1, 8, seed=0, stratum=stratum)
    assert len(tiny.val) == 8  # min_val wins over 10% of 20
    assert len(holdout_split(records[:6], 0.1, 8, seed=0, stratum=stratum).val) == 3  # at most half


def test_new_data_does_not_reshuffle_the_split() -> None:
    """A group's rank is its own seeded hash, so the old groups held out after data is added are the first of the
    same order as before: a prefix of the earlier held-out set, or a superset of it, never a different draw."""
    old = [rec(f"Old question {i}?", source=f"a.jsonl:{i}", task_type="qa") for i in range(100)]
    new = [rec(f"New question {i}?", source=f"a.jsonl:{100 + i}", task_type="qa") for i in range(20)]
    before = {r.id for r in holdout_split(old, 0.1, 8, seed=0, stratum=stratum).val}
    after = {r.id for r in holdout_split(old + new, 0.1, 8, seed=0, stratum=stratum).val}
    entered = after & {r.id for r in new}
    assert len(before) == 10 and len(after) == 12
    assert before <= after - entered or after - entered <= before
    assert len(before & after) == min(10, 12 - len(entered))


def test_training_drops_held_out_prompts_and_evaluates_each_conversation_once() -> None:
    pair = rec("Name a prime?", "Seven.", rejected="Eight.")
    twin = rec("  name a PRIME ", "Seven.")  # same prompt group; not the same conversation
    same = rec("Name a prime?", "Seven.")  # the pair's chosen side as an SFT row: the same conversation
    kept, dropped = without_heldout([rec("Name a colour?"), twin, rec("Other?")], [pair, same])
    assert [r.instruction for r in kept] == ["Name a colour?", "Other?"] and dropped == [twin]
    assert len(unique_conversations([pair, same, twin])) == 2


def test_stage_counts_reconcile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    planted = "Pretend you are a museum guide. Welcome a group of school children to a dinosaur exhibit."
    rows = [rec(f"Question {i} about gardening and soil?", source=f"in.jsonl:{i}", task_type="qa") for i in range(30)]
    rows.append(rec(f"Please do this: {planted}", source="in.jsonl:31", task_type="roleplay"))
    records = tmp_path / "records.jsonl"
    records.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", str(tmp_path / "params.yaml"), "--records", str(records), "--out", str(tmp_path / "out")]
    assert holdout_main([*argv, "--metrics", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["records_in"] == 31 == m["contaminated"] + m["train"] + m["val"]
    assert (m["contaminated"], m["val"], m["contaminated_by_set"]) == (1, 8, {"mt_bench": 1})
    bad = [json.loads(line) for line in (tmp_path / "out" / "contaminated.jsonl").read_text().splitlines()]
    assert bad[0]["where"] == "in.jsonl:31" and bad[0]["question"] == "3:turn1"
    assert len((tmp_path / "out" / "val.jsonl").read_text().splitlines()) == 8
    # only contaminated rows: one clear line, no traceback
    records.write_text(rows[-1].model_dump_json() + "\n")
    assert holdout_main([*argv, "--metrics", str(tmp_path / "m2.json")]) == 2
    err = capsys.readouterr().err
    assert "every record contains an evaluation question" in err and "Traceback" not in err
