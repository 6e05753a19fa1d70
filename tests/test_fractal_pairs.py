"""FRACTAL on the training side: cross-fitting keeps every score out-of-fold, and the `fractal_pairs` stage drops a
DPO pair only when a scorer that earned it (cross-fitted AUC >= min_auc) ranks the rejected answer higher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tasks.fractal_pairs import main as fractal_pairs_main
from tunefold.config import FractalConfig
from tunefold.data.records import Message, Record, make_record, read_records
from tunefold.fractal.aggregate import hard_aggregate
from tunefold.fractal.bags import to_bags
from tunefold.fractal.crossfit import crossfit, fold_of, judged_answers, pair_scores
from tunefold.fractal.scorer import Scorer

ROOT = Path(__file__).resolve().parents[1]
FAST = FractalConfig(hidden_dim=32, epochs=30, batch_size=8, lambda_cos=0.0, lambda_corr=0.0, pseudo_label=False)


class _KeywordEmbedder:
    """Stands in for the sentence encoder: [1, 0] for a text saying 'wrong', else [0, 1]."""

    def encode(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0] if "wrong" in t else [0.0, 1.0] for t in texts])


def judged(question: str, target: str, student: str, scores: tuple[float, float] = (9.0, 2.0)) -> Record:
    msgs = [Message(role="user", content=question), Message(role="assistant", content=target)]
    meta = {"teacher_score": scores[0], "student_score": scores[1], "student_response": student, "mfd": 7.0}
    return make_record(msgs, "d.jsonl:1", metadata=meta)


def pair(question: str, chosen: str, rejected: str) -> Record:
    msgs = [Message(role="user", content=question), Message(role="assistant", content=chosen)]
    return make_record(msgs, "p.jsonl:1", rejected=rejected, metadata={"source_name": "prefs"})


def test_every_answer_is_scored_by_the_scorer_of_its_own_fold() -> None:
    records = [judged(f"Question {i}?", f"Answer {i} is right. Fine.", f"Answer {i} is wrong.") for i in range(16)]
    records.append(judged("Unrated?", "Some answer.", "Other.", scores=(9.0, 2.0)).model_copy(update={"metadata": {}}))
    answers = judged_answers(records)
    assert len(answers) == 32  # the record without ratings gives none
    fit = crossfit(answers, _KeywordEmbedder(), FAST)  # type: ignore[arg-type]
    folds = [fold_of(a.question, 2, FAST.seed) for a in answers]
    assert set(folds) == {0, 1} and all(s is not None for s in fit.scorers)
    assert [f["trained_on"] for f in fit.stats["folds"]] == [folds.count(1), folds.count(0)]
    assert fit.stats["full"]["trained_on"] == 32
    # each answer's score is its own fold's scorer's, the one that never saw it
    for f, scorer in enumerate(fit.scorers):
        mine = [a for a, k in zip(answers, folds, strict=True) if k == f]
        flat = scorer.predict(to_bags(mine, _KeywordEmbedder(), FAST)).tolist()  # type: ignore[arg-type,union-attr]
        expected, at = [], 0
        for a in mine:
            expected.append(hard_aggregate(flat[at : at + len(a.spans)], FAST.aggregation))
            at += len(a.spans)
        got = [s for s, k in zip(fit.answer_scores, folds, strict=True) if k == f]
        assert got == pytest.approx(expected, abs=1e-6)  # one batch vs another: float rounding differs
    assert fit.stats["auc_crossfit"] == 1.0  # 'wrong' sentences are learnable from the other fold's ratings
    pairs = [pair("Question 3?", "All right.", "That is wrong."), pair("New one?", "This is wrong.", "Right.")]
    (c1, r1), (c2, r2) = pair_scores(pairs, fit, _KeywordEmbedder(), FAST)  # type: ignore[arg-type,misc]
    assert c1 > r1 and c2 < r2
    assert pair_scores([pair("Q?", "", "x")], fit, _KeywordEmbedder(), FAST) == [None]  # type: ignore[arg-type]


def _stage(tmp_path: Path, records: list[Record], preferences: list[Record], **fractal: object) -> tuple[dict, Path]:
    judged_dir, out = tmp_path / "difficulty", tmp_path / "out"
    judged_dir.mkdir(parents=True)
    (judged_dir / "records.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records[1:]))
    dropped = [{"record": records[0].model_dump(), "kind": "fitted", "reason": "MFD 0 <= min_mfd 0"}]
    unscored = judged("Never rated?", "x", "y").model_copy(update={"metadata": {}})
    dropped.append({"record": unscored.model_dump(), "kind": "not scored", "reason": "judge reply failed"})
    (judged_dir / "dropped.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dropped))
    prefs = tmp_path / "preferences.jsonl"
    prefs.write_text("".join(p.model_dump_json() + "\n" for p in preferences))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fractal"] |= {"epochs": 60, "pseudo_label": False, **fractal}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = tmp_path / "m.json"
    argv = ["--params", str(tmp_path / "params.yaml"), "--metrics", str(metrics)]
    argv += ["--judged", str(judged_dir), "--pairs", str(prefs), "--out", str(out), "--scorer", str(out / "s.pt")]
    assert fractal_pairs_main(argv) == 0
    return json.loads(metrics.read_text()), out


CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Lisbon", "Vienna", "Oslo", "Athens", "Dublin", "Warsaw", "Prague"]
CITIES += ["Helsinki", "Budapest", "Brussels", "Stockholm", "Copenhagen"]


def test_the_stage_drops_only_what_a_trusted_scorer_disputes(tmp_path: Path) -> None:
    """Real sentence encoder: targets state the capital, students decline. The cross-fitted scorer tells them
    apart, so the one pair whose chosen answer is a refusal is dropped (with its reason); the others are kept;
    `pairs: keep` keeps all; a scorer that cannot separate anything (identical answers) drops nothing."""
    records = [
        judged(
            f"What is the capital city of the country whose capital is {c}?",
            f"The capital is {c}.",
            "Sorry, I cannot help.",
        )
        for c in CITIES
    ]
    pairs = [
        pair("Which city is the capital of Peru?", "The capital of Peru is Lima.", "Sorry, I cannot help with that."),
        pair("Which city is the capital of Chile?", "I am sorry, I cannot answer that.", "Santiago is the capital."),
        pair("Which city is the capital of Kenya?", "Nairobi is the capital of Kenya.", "I cannot help, sorry."),
    ]
    metrics, out = _stage(tmp_path, records, pairs)
    assert metrics["judged_answers"] == 2 * len(CITIES) and metrics["auc_crossfit"] >= 0.6, metrics
    assert metrics["filter_applied"] and metrics["pairs_in"] == metrics["kept"] + metrics["dropped"] == 3
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert [d["record"]["id"] for d in dropped] == [pairs[1].id] and "rank the rejected" in dropped[0]["reason"]
    kept = read_records(out / "preferences.jsonl")
    assert [p.id for p in kept] == [pairs[0].id, pairs[2].id]
    assert all(p.metadata["fractal"]["chosen"] > p.metadata["fractal"]["rejected"] for p in kept)
    assert len((out / "answers.jsonl").read_text().splitlines()) == 2 * len(CITIES)
    # the scorer for the benchmark's answers learned from every judged answer (none held out: no fold remains)
    scorer = Scorer.load(out / "s.pt")
    assert metrics["scorer"]["trained_on"] == 2 * len(CITIES) > max(f["trained_on"] for f in metrics["folds"])
    assert scorer.meta["trained_on"] == f"{2 * len(CITIES)} judged answers of stage difficulty"

    keep, out = _stage(tmp_path / "keep", records, pairs, pairs="keep")
    assert not keep["filter_applied"] and keep["kept"] == 3 and keep["pairs_disagreeing"] == 1

    same = [judged(f"Say something about {c}.", f"{c} is a city.", f"{c} is a city.") for c in CITIES]
    blind, out = _stage(tmp_path / "blind", same, pairs)
    assert blind["auc_crossfit"] == 0.5 and not blind["filter_applied"] and blind["kept"] == 3
    assert "below min_auc" in (out / "report.md").read_text()


def test_no_judged_answer_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`difficulty` rated nothing (every instruction unscored): one line saying so, exit 2, no traceback."""
    judged_dir = tmp_path / "difficulty"
    judged_dir.mkdir()
    (judged_dir / "records.jsonl").write_text("")
    unscored = judged("Never rated?", "x", "y").model_copy(update={"metadata": {}})
    row = {"record": unscored.model_dump(), "kind": "not scored", "reason": "judge reply failed"}
    (judged_dir / "dropped.jsonl").write_text(json.dumps(row) + "\n")
    prefs = tmp_path / "preferences.jsonl"
    prefs.write_text(pair("Q?", "A.", "B.").model_dump_json() + "\n")
    argv = ["--params", str(ROOT / "params.yaml"), "--judged", str(judged_dir), "--pairs", str(prefs)]
    assert fractal_pairs_main([*argv, "--out", str(tmp_path / "out"), "--scorer", str(tmp_path / "s.pt")]) == 2
    err = capsys.readouterr().err
    assert "nothing to learn sentence scores from" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "preferences.jsonl").exists()  # no half-made DPO data
    assert not (tmp_path / "s.pt").exists()
