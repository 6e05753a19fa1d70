"""Judge audit: degradations, the three measurements and their thresholds on hand-built rows, and one real run of
the stage against the embedded llama.cpp judge."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run
from tunefold.config import AuditSettings, load_params
from tunefold.errors import InputError, ParamsError
from tunefold.eval.audit import (
    Reference,
    audit_judge,
    change_last_number,
    draw_probes,
    load_audit,
    position_check,
    position_stats,
    rating_discrimination,
    references_from,
    shuffle_sentences,
    spread_check,
    spread_stats,
    truncate,
    verdict_discrimination,
)
from tunefold.eval.flask import load_instances
from tunefold.eval.mtbench import Question, load_questions
from tunefold.fractal.split import split_sentences

MINI = ROOT / "data" / "benchmarks" / "mt_bench_mini"
FLASK = ROOT / "data" / "benchmarks" / "flask_mini" / "flask_evaluation.jsonl"
CFG = AuditSettings()  # position <= 0.5, discrimination >= 0.7, modal share <= 0.6, 4 items measured


def pair(g1: str, g2: str) -> dict[str, str]:
    return {"g1_winner": g1, "g2_winner": g2}


# --- degradations ------------------------------------------------------------------------------------------------


def test_truncation_keeps_the_first_third_of_the_words() -> None:
    text = "one two three four five six seven eight nine"
    assert truncate(text) == "one two three"
    assert truncate("line one\n  indented two three four five") == "line one"  # formatting kept up to the cut
    assert truncate("too short") is None


def test_shuffle_is_seeded_keeps_every_sentence_and_never_returns_the_original() -> None:
    text = "First comes this. Then that one! Is there a third? Yes, a fourth sentence."
    a, b = shuffle_sentences(text, random.Random(1)), shuffle_sentences(text, random.Random(1))
    assert a == b and a != text
    assert sorted(split_sentences(a)) == sorted(split_sentences(text))
    for seed in range(20):  # two sentences: every draw swaps them, even one that shuffles into the same order
        assert shuffle_sentences("Alpha here. Beta there.", random.Random(seed)) == "Beta there. Alpha here."
    assert shuffle_sentences("Only one sentence here.", random.Random(0)) is None
    assert shuffle_sentences("Same. Same.", random.Random(0)) is None


def test_last_number_is_changed_and_nothing_else() -> None:
    text = "In 1813 she wrote it; the answer is 55."
    for seed in range(30):
        out = change_last_number(text, random.Random(seed))
        assert out is not None and out.startswith("In 1813 she wrote it; the answer is ") and out.endswith(".")
        new = out.removeprefix("In 1813 she wrote it; the answer is ").removesuffix(".")
        assert new.isdigit() and new != "55" and 1 <= abs(int(new) - 55) <= 9
    assert change_last_number("x = 0.05", random.Random(0)) in {f"x = {k}.05" for k in range(1, 10)}
    assert change_last_number("no digits at all", random.Random(0)) is None
    assert change_last_number("the O(n) loop over x2", random.Random(0)) is None  # part of a word is no number


def test_probes_from_the_shipped_data_are_deterministic() -> None:
    questions = load_questions(MINI / "question.jsonl", MINI / "reference_answer" / "tunefold-reference.jsonl")
    refs = references_from(questions, load_instances(FLASK))
    assert {r.key.split(":")[0] for r in refs} == {"mt_bench", "flask"}
    math = next(r for r in refs if r.key == "mt_bench:7")
    assert math.question.turns == [questions[6].turns[0]] and math.question.reference == [math.answer]
    kinds = ["truncate", "shuffle", "number"]
    probes, skipped = draw_probes(refs, kinds, 6, seed=0)
    again, _ = draw_probes(refs, kinds, 6, seed=0)
    assert [(p.reference.key, p.degradation, p.text) for p in probes] == [
        (p.reference.key, p.degradation, p.text) for p in again
    ]
    drawn = {p.reference.key for p in probes}
    assert len(drawn) == 6 and len(probes) == 6 * 3 - sum(skipped.values())
    assert all(p.text != p.reference.answer and p.text.strip() for p in probes)
    # a reference nothing applies to is never drawn; the number probe is skipped where there is no number
    bare = Reference("x:1", Question(1, "writing", ["Say hi."]), "Hi")
    assert draw_probes([bare], kinds, 5, 0) == ([], {k: 0 for k in kinds})
    words = Reference("x:2", Question(2, "writing", ["Describe."]), "Plain words only here. And a second one.")
    probes, skipped = draw_probes([words], kinds, 5, 0)
    assert [p.degradation for p in probes] == ["truncate", "shuffle"] and skipped == {
        "truncate": 0,
        "shuffle": 0,
        "number": 1,
    }


# --- measurements and thresholds ---------------------------------------------------------------------------------


def test_position_following_fails_and_answer_following_passes() -> None:
    # g1: model_1 shown as A; g2: model_1 shown as B. (model_1, model_2) = slot A both times.
    by_slot = [pair("model_1", "model_2")] * 30 + [pair("model_2", "model_1")] * 2
    stats = position_stats(by_slot)
    assert (stats.followed_a, stats.followed_b, stats.measured, stats.followed_share) == (30, 2, 32, 1.0)
    check = position_check(stats, CFG)
    assert check.status == "fail"
    assert "cannot tell answers apart: 32/32 verdicts followed position" in check.sentence

    by_answer = [pair("model_1", "model_1")] * 5 + [pair("model_2", "model_2")] * 3 + [pair("tie", "tie")] * 2
    by_answer += [pair("model_1", "model_2")] * 2 + [pair("tie", "model_1"), pair("error", "model_1")]
    stats = position_stats(by_answer)
    assert stats.model_dump() == {
        "pairs": 14,
        "errors": 1,
        "measured": 13,
        "consistent": 8,
        "both_tie": 2,
        "one_tie": 1,
        "followed_a": 2,
        "followed_b": 0,
        "followed_share": round(2 / 13, 4),
        "consistent_share": round(10 / 13, 4),
    }
    assert position_check(stats, CFG).status == "pass"
    # exactly at the limit passes; just above fails
    half = [pair("model_1", "model_2")] * 2 + [pair("model_1", "model_1")] * 2
    assert position_check(position_stats(half), CFG).status == "pass"
    assert position_check(position_stats(half), CFG.model_copy(update={"max_position_share": 0.49})).status == "fail"


def test_position_with_too_few_pairs_is_not_measured_and_without_pairs_skipped() -> None:
    few = position_stats([pair("model_1", "model_2")] * 3 + [pair("error", "error")] * 5)
    check = position_check(few, CFG)
    assert check.status == "not_measured" and "3 of 8 verdict pairs usable" in check.sentence
    assert position_check(position_stats([]), CFG).status == "skipped"


def test_spread_fails_when_one_rating_dominates() -> None:
    flat = [{"score": 10}] * 8 + [{"score": 9}, {"score": 1}, {"score": -1}]
    stats = spread_stats(flat)
    assert (stats.ratings, stats.failures, stats.modal_rating, stats.modal_share) == (10, 1, 10, 0.8)
    assert stats.distribution[10] == 8 and stats.distribution[5] == 0 and sum(stats.distribution.values()) == 10
    check = spread_check(stats, CFG)
    assert check.status == "fail" and "ratings barely vary: 8/10 ratings are 10" in check.sentence
    varied = spread_stats([{"score": s} for s in (2, 4, 5, 6, 7, 7, 8, 9, 9, 10)])
    assert spread_check(varied, CFG).status == "pass" and varied.std is not None and varied.std > 2
    assert spread_check(spread_stats([{"score": 3}, {"score": -1}]), CFG).status == "not_measured"
    assert spread_stats([{"score": 0}, {"score": 11}]).failures == 2  # out of range is no rating


def probe(kind: str, ref: int | None, deg: int | None) -> dict:
    return {"degradation": kind, "reference_rating": ref, "degraded_rating": deg}


def test_rating_discrimination_both_ways_and_failures_apart() -> None:
    good = [
        probe("truncate", 9, 3),
        probe("shuffle", 8, 6),
        probe("number", 9, 9),
        probe("number", 7, 2),
        probe("truncate", 8, 7),
        probe("shuffle", None, 4),
    ]
    d = rating_discrimination(good)
    assert (d.probes, d.judged, d.failures, d.for_reference, d.ties, d.for_degraded) == (6, 5, 1, 4, 1, 0)
    assert d.share == 0.8 and d.mean_gap == round((6 + 2 + 0 + 5 + 1) / 5, 4)
    assert d.by_degradation["number"].model_dump() == {"judged": 2, "for_reference": 1, "share": 0.5}
    audit = audit_judge("j", position_stats([]), spread_stats([{"score": s} for s in range(1, 11)]), [d], CFG)
    assert audit.trusted and [c.status for c in audit.checks] == ["skipped", "pass", "pass"]
    flat = rating_discrimination([probe("truncate", 10, 10)] * 4 + [probe("number", 10, 9)])
    check = audit_judge("j", position_stats([]), spread_stats([]), [flat], CFG).checks[1]
    assert check.status == "fail" and "rated the reference above its degraded copy in 1/5 probes" in check.sentence


def test_verdict_discrimination_counts_position_following() -> None:
    rows = [
        {"degradation": "truncate", "verdicts": ["A", "B"]},  # reference both times
        {"degradation": "shuffle", "verdicts": ["A", "A"]},  # slot A both times
        {"degradation": "number", "verdicts": ["C", None]},
    ]
    d = verdict_discrimination(rows)
    assert (d.judged, d.failures, d.for_reference, d.ties, d.for_degraded, d.followed_position) == (5, 1, 3, 1, 1, 1)
    assert d.share == 0.6


def test_unmeasured_checks_leave_the_judge_untrusted_and_failures_are_named(tmp_path: Path) -> None:
    by_slot = position_stats([pair("model_1", "model_2")] * 32)
    varied = spread_stats([{"score": s} for s in range(1, 11)])
    sees = rating_discrimination([probe("truncate", 9, 2)] * 4)
    audit = audit_judge("tiny", by_slot, varied, [sees], CFG, probes=4, skipped_probes={"truncate": 0})
    assert not audit.trusted and audit.flags == [audit.checks[0].sentence]
    assert audit.summary.startswith("judge tiny is not trusted: this judge cannot tell answers apart: 32/32")
    few = audit_judge("tiny", position_stats([]), varied, [rating_discrimination([probe("truncate", 9, 2)])], CFG)
    assert not few.trusted and [c.status for c in few.checks] == ["skipped", "not_measured", "pass"]
    # what the gate and the report read back, extra keys (the stage's llm, seconds) ignored
    path = tmp_path / "judge_audit.json"
    path.write_text(json.dumps(audit.model_dump(mode="json") | {"llm": {}, "seconds": 1.0}))
    assert load_audit(path) == audit
    path.write_text('{"judge": "x"}')
    with pytest.raises(InputError, match="not a judge audit"):
        load_audit(path)
    with pytest.raises(InputError, match="run the judge_audit stage first"):
        load_audit(tmp_path / "none.json")


def test_audit_params_are_validated(tmp_path: Path) -> None:
    assert load_params(ROOT / "params.yaml").eval.audit == AuditSettings()
    path = tmp_path / "params.yaml"
    for bad, message in (("[truncate, truncate]", "degradations repeat"), ("[blur]", "Input should be")):
        path.write_text(f"ingest:\n  sources: [{{path: a}}]\neval:\n  audit:\n    degradations: {bad}\n")
        with pytest.raises(ParamsError, match=re.escape("params.yaml:5: eval.audit.degradations")) as err:
            load_params(path)
        assert message in str(err.value)


# --- the stage, for real -----------------------------------------------------------------------------------------


def test_stage_without_mt_bench_judgments_is_one_clear_line(tmp_path: Path) -> None:
    proc = run(
        [
            sys.executable,
            "-m",
            "tasks.judge_audit",
            "--judgments",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
        ],
        ROOT,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: judge_audit: ")
    assert "run the mt_bench stage first" in proc.stderr and "Traceback" not in proc.stderr


def test_judgments_of_another_judge_are_refused_not_audited(tmp_path: Path) -> None:
    from tasks.judge_audit import judgments_of

    row = {"judge": ["gpt-4", "single-v1"], "score": 7}
    (tmp_path / "gpt-4_single.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "gpt-4_pair.jsonl").write_text("")
    with pytest.raises(InputError, match=r"judgments by \['gpt-4'\], not by tiny; re-run mt_bench"):
        judgments_of("tiny", tmp_path)
    assert judgments_of("gpt-4", tmp_path) == ([row], [])


def test_real_run_against_the_embedded_judge(tmp_path: Path) -> None:
    """mt_bench judges one question's two turns (hand-written answers: the reference against a wrong one), then the
    audit stage probes the same embedded judge with one reference and two degraded copies, rated and compared in both
    orders. Whatever the judge does, the verdict must follow from its numbers and the thresholds."""
    from tasks.judge_audit import main
    from tasks.mt_bench import run_mt_bench
    from tunefold.pipeline.stage import StageContext

    refs = {
        json.loads(x)["question_id"]: json.loads(x)
        for x in (MINI / "reference_answer" / "tunefold-reference.jsonl").read_text().splitlines()
    }
    answers = tmp_path / "answers"
    answers.mkdir()
    for model_id, turns in (("good", lambda q: refs[q]["choices"][0]["turns"]), ("bad", lambda q: ["42.", "No."])):
        rows = [{"question_id": q, "model_id": model_id, "choices": [{"index": 0, "turns": turns(q)}]} for q in (7,)]
        (answers / f"{model_id}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = {
        "ingest": {"sources": [{"path": "unused.jsonl"}]},
        "eval": {
            "candidate": {"model_id": "good"},
            "baseline": {"model_id": "bad"},
            "mt_bench": {
                "questions": str(MINI / "question.jsonl"),
                "question_ids": [7],
                "references": str(MINI / "reference_answer" / "tunefold-reference.jsonl"),
            },
            "flask": {"data": str(FLASK)},
            "judge_output": "json",
            "audit": {"references": 1, "degradations": ["truncate", "number"], "pairwise": True, "min_measured": 2},
        },
        "llm": {"cache_dir": str(tmp_path / "cache"), "judge": {"max_tokens": 64}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    ctx = StageContext("mt_bench", load_params(tmp_path / "params.yaml"))
    try:
        run_mt_bench(ctx, answers, tmp_path / "judgments")
    finally:
        ctx.close()

    argv = [
        "--params",
        str(tmp_path / "params.yaml"),
        "--judgments",
        str(tmp_path / "judgments"),
        "--out",
        str(tmp_path / "audit"),
        "--metrics",
        str(tmp_path / "judge_audit.json"),
    ]
    assert main(argv) == 0
    audit = load_audit(tmp_path / "judge_audit.json")
    metrics = json.loads((tmp_path / "judge_audit.json").read_text())
    print("judge audit:", json.dumps({k: metrics[k] for k in ("summary", "position", "spread", "discrimination")}))
    assert metrics["llm"]["judge"]["requests"] >= 7  # 1 reference + 2 copies rated, 2 probes x 2 orders

    cfg = AuditSettings(**params["eval"]["audit"])
    pairs = [json.loads(x) for x in next((tmp_path / "judgments").glob("*_pair.jsonl")).read_text().splitlines()]
    single = [json.loads(x) for x in next((tmp_path / "judgments").glob("*_single.jsonl")).read_text().splitlines()]
    assert audit.judge == pairs[0]["judge"][0]
    assert audit.position == position_stats(pairs) and audit.position.pairs == 2
    assert audit.spread == spread_stats(single) and audit.spread.ratings + audit.spread.failures == 4
    probes = [json.loads(x) for x in (tmp_path / "audit" / "probes.jsonl").read_text().splitlines()]
    assert audit.probes == 2 and sorted(r["method"] for r in probes) == ["ratings"] * 2 + ["verdicts"] * 2
    assert {r["degradation"] for r in probes} == {"truncate", "number"}
    assert len({r["reference"] for r in probes}) == 1
    assert [d.method for d in audit.discrimination] == ["ratings", "verdicts"]
    assert audit.discrimination[0] == rating_discrimination([r for r in probes if r["method"] == "ratings"])
    assert audit.discrimination[1] == verdict_discrimination([r for r in probes if r["method"] == "verdicts"])

    # each check's status is what its numbers and the thresholds say, and trust is all of them
    checks = {c.name: c for c in audit.checks}
    p, s, (dr, dv) = audit.position, audit.spread, audit.discrimination
    assert checks["position"].status == (
        "not_measured" if p.measured < 2 else "fail" if p.followed_share > cfg.max_position_share else "pass"
    )
    assert checks["spread"].status == (
        "not_measured" if s.ratings < 2 else "fail" if s.modal_share > cfg.max_modal_share else "pass"
    )
    for d in (dr, dv):
        assert checks[f"discrimination_{d.method}"].status == (
            "not_measured" if d.judged < 2 else "fail" if d.share < cfg.min_discrimination else "pass"
        )
    assert audit.trusted == all(c.status in ("pass", "skipped") for c in audit.checks)
    assert audit.trusted == (audit.flags == [])

    # a re-run asks nothing new (every reply cached) and writes the same probes
    before = (tmp_path / "audit" / "probes.jsonl").read_bytes()
    assert main(argv) == 0
    assert json.loads((tmp_path / "judge_audit.json").read_text())["llm"]["judge"]["calls_sent"] == 0
    assert (tmp_path / "audit" / "probes.jsonl").read_bytes() == before
