"""MT-Bench formats, prompt selection and aggregation on hand-written data with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED
from tunefold.errors import InputError
from tunefold.eval.mtbench import (
    Question,
    aggregate_pairs,
    aggregate_single,
    answer_row,
    combine_orders,
    judged_turns,
    load_answers,
    load_judge_prompts,
    load_questions,
    pair_messages,
    prompt_for,
    require_references,
    single_messages,
)

OFFICIAL = SHARED / "benchmarks" / "mt_bench"
MINI = Path(__file__).resolve().parents[1] / "data" / "benchmarks" / "mt_bench_mini"


def test_single_aggregation_keeps_failures_out_of_means() -> None:
    rows = [
        {"question_id": 1, "turn": 1, "category": "math", "score": 8, "judge_status": "ok"},
        {"question_id": 1, "turn": 2, "category": "math", "score": -1, "judge_status": "truncated"},
        {"question_id": 2, "turn": 1, "category": "writing", "score": 5, "judge_status": "ok"},
        {"question_id": 2, "turn": 2, "category": "writing", "score": 6, "judge_status": "ok"},
        {"question_id": 3, "turn": 1, "category": "writing", "score": -1, "judge_status": "out_of_range"},
    ]
    agg = aggregate_single(rows)
    assert agg["overall"] == {
        "mean": round(19 / 3, 3),
        "interval": [5.5, 8.0],  # questions resampled whole: q2 alone gives 5.5, q1 alone 8
        "judged": 3,
        "failures": 2,
        "failure_kinds": {"out_of_range": 1, "truncated": 1},
    }
    assert agg["turn_2"] == {
        "mean": 6.0,
        "interval": None,  # one question: no spread to measure
        "judged": 1,
        "failures": 1,
        "failure_kinds": {"truncated": 1},
    }
    assert agg["category/math"]["failure_kinds"] == {"truncated": 1}
    all_bad = aggregate_single([{"question_id": 3, "turn": 1, "category": "stem", "score": -1}])
    assert all_bad["category/stem"] == {
        "mean": None,
        "interval": None,
        "judged": 0,
        "failures": 1,
        "failure_kinds": {"unparseable": 1},
    }


def test_pairwise_needs_both_orders_to_agree() -> None:
    assert combine_orders("model_1", "model_1") == "model_1"
    assert combine_orders("model_1", "model_2") == "tie"  # order disagreement
    assert combine_orders("model_2", "tie") == "tie"
    assert combine_orders(None, "model_1") == "error"
    rows = [{"result": r} for r in ("model_1", "model_1", "tie", "model_2", "error")]
    assert aggregate_pairs(rows) == {
        "win": 2,
        "tie": 1,
        "loss": 1,
        "error": 1,
        "win_rate": 0.5,
        "win_rate_adjusted": 0.625,
    }


def _fastchat_single(rows: list[dict]) -> dict[tuple[str, int | None], float]:
    """show_result.py's single-answer table, from its definition: rows with score -1 dropped, then the mean
    score per model (and per model and turn)."""
    kept = [r for r in rows if r["score"] != -1]
    out: dict[tuple[str, int | None], float] = {}
    for model in {r["model"] for r in kept}:
        mine = [r["score"] for r in kept if r["model"] == model]
        out[(model, None)] = sum(mine) / len(mine)
        for turn in (1, 2):
            t = [r["score"] for r in kept if r["model"] == model and r["turn"] == turn]
            if t:
                out[(model, turn)] = sum(t) / len(t)
    return out


def _fastchat_pairs(rows: list[dict], model: str) -> dict[str, float]:
    """show_result.py's pairwise table, from its definition: rows where either order is `error` dropped; a win
    only when g1 and g2 name the same model, anything else a tie; win_rate = W/(W+T+L), win_rate_adjusted =
    (W + T/2)/(W+T+L)."""
    w = t = lo = 0
    for r in rows:
        if "error" in (r["g1_winner"], r["g2_winner"]):
            continue
        if r["g1_winner"] == "tie" or r["g1_winner"] != r["g2_winner"]:
            t += 1
        elif (r["g1_winner"] == "model_1") == (r["model_1"] == model):
            w += 1
        else:
            lo += 1
    n = w + t + lo
    return {"win": w, "tie": t, "loss": lo, "win_rate": w / n, "win_rate_adjusted": (w + t / 2) / n}


def test_our_aggregates_equal_fastchats_formulas_on_random_judgments() -> None:
    """FastChat's show_result.py, restated from its published definitions, against our aggregation on 200
    random single and pairwise judgments (failures included)."""
    import random

    rng = random.Random(7)
    single = [
        {"model": m, "question_id": q, "turn": t, "category": "writing", "score": rng.choice([-1, *range(1, 11)])}
        for m in ("a", "b")
        for q in range(50)
        for t in (1, 2)
    ]
    ours = {m: aggregate_single([r for r in single if r["model"] == m]) for m in ("a", "b")}
    for (model, turn), mean in _fastchat_single(single).items():
        assert ours[model]["overall" if turn is None else f"turn_{turn}"]["mean"] == round(mean, 3)
    verdicts = ("model_1", "model_2", "tie", "error")
    pairs = [
        {"model_1": "a", "model_2": "b", "g1_winner": rng.choice(verdicts), "g2_winner": rng.choice(verdicts)}
        for _ in range(200)
    ]
    for r in pairs:
        r["result"] = combine_orders(*(None if g == "error" else g for g in (r["g1_winner"], r["g2_winner"])))
    theirs, agg = _fastchat_pairs(pairs, "a"), aggregate_pairs(pairs)
    assert (agg["win"], agg["tie"], agg["loss"]) == (theirs["win"], theirs["tie"], theirs["loss"])
    assert agg["win_rate"] == round(theirs["win_rate"], 4)
    assert agg["win_rate_adjusted"] == round(theirs["win_rate_adjusted"], 4)


def test_references_come_only_from_the_reference_file(tmp_path: Path) -> None:
    """A question's own `reference` field is not what the judge sees; a math question without a reference answer
    is refused with its id, as FastChat refuses it."""
    q = tmp_path / "question.jsonl"
    rows = [
        {"question_id": 1, "category": "math", "turns": ["2+2?", "and 3+3?"], "reference": ["4", "6"]},
        {"question_id": 2, "category": "writing", "turns": ["A haiku."]},
        {"question_id": 3, "category": "coding", "turns": ["Reverse a list."]},
    ]
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions = load_questions(q)
    assert all(x.reference is None for x in questions)
    with pytest.raises(InputError, match=r"2 math/reasoning/coding question\(s\).*question ids \[1, 3\]"):
        require_references(questions, None)
    refs = tmp_path / "ref.jsonl"
    refs.write_text(json.dumps(answer_row(1, "gpt-4", ["4", "6"], 0.0)) + "\n")
    with pytest.raises(InputError, match=r"question ids \[3\]"):
        require_references(load_questions(q, refs), refs)
    require_references(load_questions(q, refs, ids=[1, 2]), refs)


def test_one_turn_questions_are_judged_on_the_turns_they_have(tmp_path: Path) -> None:
    own = load_judge_prompts(None)
    one = Question(5, "writing", ["Write a haiku about rain."])
    assert judged_turns(one) == (1,) and judged_turns(Question(6, "stem", ["a", "b"])) == (1, 2)
    text = single_messages(prompt_for(own, "single", one, 1), one, ["Rain taps."], 1)[1]["content"]
    assert "Write a haiku about rain." in text and "Rain taps." in text
    pair = pair_messages(prompt_for(own, "pairwise", one, 1), one, ["A."], ["B."], 1)[1]["content"]
    assert "A." in pair and "B." in pair


def test_official_questions_references_and_prompts_load() -> None:
    if not OFFICIAL.exists():
        pytest.skip("official MT-Bench files not present")
    qs = load_questions(OFFICIAL / "question.jsonl", OFFICIAL / "reference_answer" / "gpt-4.jsonl")
    assert len(qs) == 80 and {q.category for q in qs} >= {"writing", "math", "coding", "humanities"}
    assert all(len(q.turns) == 2 for q in qs)
    graded = [q for q in qs if q.category in ("math", "reasoning", "coding")]
    assert len(graded) == 30 and all(q.reference and len(q.reference) == 2 for q in graded)
    official = load_judge_prompts(OFFICIAL / "judge_prompts.jsonl")
    math_q = next(q for q in qs if q.category == "math")
    p = prompt_for(official, "single", math_q, 2)
    assert p.name == "single-math-v1-multi-turn"
    msgs = single_messages(p, math_q, ["first answer", "second answer"], 2)
    assert "second answer" in msgs[1]["content"] and math_q.reference[1][:30] in msgs[1]["content"]
    writing = next(q for q in qs if q.category == "writing")
    assert prompt_for(official, "pairwise", writing, 1).name == "pair-v2"
    pm = pair_messages(prompt_for(official, "pairwise", writing, 2), writing, ["a1", "a2"], ["b1", "b2"], 2)
    assert "a2" in pm[1]["content"] and "b2" in pm[1]["content"]


def test_own_prompts_cover_every_case_and_fill_every_field() -> None:
    own = load_judge_prompts(None)
    assert len(own) == 8 and all(p.name.startswith("tunefold-") for p in own.values())
    qs = {
        q.category: q
        for q in load_questions(MINI / "question.jsonl", MINI / "reference_answer/tunefold-reference.jsonl")
    }
    for cat in ("math", "writing"):
        for turn in (1, 2):
            text = single_messages(prompt_for(own, "single", qs[cat], turn), qs[cat], ["X1", "X2"], turn)[1]["content"]
            assert ("X2" in text) == (turn == 2) and "{" not in text.replace("{}", "")
            if cat == "math":
                assert qs[cat].reference[turn - 1] in text


def test_answer_files_resume_past_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    row = {"question_id": 7, "answer_id": "x", "model_id": "m", "choices": [{"index": 0, "turns": ["a", "b"]}]}
    path.write_text(json.dumps(row) + "\n" + '{"question_id": 8, "choi')
    assert load_answers(path) == {7: ["a", "b"]}


def test_bad_question_files(tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["x"]}\n')
    with pytest.raises(InputError, match=r"q\.jsonl:1: not an MT-Bench question"):
        load_questions(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_questions(tmp_path / "none.jsonl")
    with pytest.raises(InputError, match="missing prompt"):
        (tmp_path / "p.jsonl").write_text('{"name": "single-v1"}\n')
        load_judge_prompts(tmp_path / "p.jsonl")


def test_generation_resumes_and_never_mixes_models(base_model: Path, tmp_path: Path) -> None:
    """A killed run (answers file ending in a torn line) continues with only the missing questions; answers of
    another model or setting are discarded, not mixed in."""
    from tasks.generate import Item, answer_items
    from tunefold.config import EvalConfig
    from tunefold.eval.generation import hf_answerer
    from tunefold.eval.mtbench import answer_row

    cfg = EvalConfig(max_new_tokens=4, batch_size=2)
    answer = hf_answerer(cfg, base_model, None)
    items = [Item(i, [f"Name a colour, {i}.", "Another one?"], 0.0) for i in range(3)]
    path = tmp_path / "base.jsonl"

    def row(it: Item, r: list[str]) -> dict:
        return answer_row(it.key, "base", r, 0.0)

    first = answer_items(answer, items[:2], path, "fp1", row, 2, "t")
    assert first["generated"] == 2
    with path.open("a") as f:
        f.write('{"question_id": 2, "choi')  # killed mid-write
    again = answer_items(answer, items, path, "fp1", row, 2, "t")
    assert (again["generated"], again["resumed"]) == (1, 2)
    assert sorted(load_answers(path)) == [0, 1, 2] and all(len(t) == 2 for t in load_answers(path).values())
    other = answer_items(answer, items, path, "fp2", row, 2, "t")  # another model or setting
    assert other["generated"] == 3


def test_official_files_run_through_generate_and_judge(base_model: Path, tmp_path: Path) -> None:
    """Two official MT-Bench questions (one graded against its GPT-4 reference) through the real stages: answers
    by the base model, judgments by the embedded llama.cpp judge; every rating is either a score or a counted
    failure."""
    if not OFFICIAL.exists():
        pytest.skip("official MT-Bench files not present")
    import yaml

    from tasks.generate import generate
    from tasks.mt_bench import run_mt_bench
    from tunefold.config import load_params
    from tunefold.pipeline.stage import StageContext

    params = {
        "ingest": {"sources": [{"path": "unused.jsonl"}]},
        "eval": {"candidate": {"model_id": "base-a"}, "baseline": {"model_id": "base-b"},
                 "mt_bench": {"questions": str(OFFICIAL / "question.jsonl"),
                              "references": str(OFFICIAL / "reference_answer" / "gpt-4.jsonl"),
                              "judge_prompts": str(OFFICIAL / "judge_prompts.jsonl"), "question_ids": [81, 111]},
                 "flask": {"limit": 1}, "max_new_tokens": 8, "judge_output": "json"},
        "llm": {"cache_dir": str(tmp_path / "cache"), "judge": {"max_tokens": 64}},
    }  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    ctx = StageContext("mt_bench", load_params(tmp_path / "params.yaml"))
    try:
        gen = generate(ctx, base_model, tmp_path / "answers", tmp_path / "flask_answers")
        assert gen["mt_bench/base-a"]["generated"] == 2
        metrics = run_mt_bench(ctx, tmp_path / "answers", tmp_path / "judgments")
    finally:
        ctx.close()
    single = [json.loads(x) for x in next((tmp_path / "judgments").glob("*_single.jsonl")).read_text().splitlines()]
    assert {r["judge"][1] for r in single} >= {"single-v1", "single-math-v1", "single-math-v1-multi-turn"}
    overall = metrics["base-a"]["overall"]
    assert overall["judged"] + overall["failures"] == 4
    statuses = {r["judge_status"] for r in single}
    assert statuses <= {"ok", "truncated", "unparseable", "out_of_range", "empty"}
    assert all((r["score"] == -1) == (r["judge_status"] != "ok") for r in single)
    cut = [r for r in single if r["judge_status"] == "truncated"]
    assert all(r["finish_reason"] == "length" for r in cut)
    assert sum(overall["failure_kinds"].values()) == overall["failures"]
    deviations = metrics["comparability"]["deviations"]
    assert not metrics["comparability"]["comparable"]
    assert "answers capped at 8 tokens (official 1024)" in deviations and "2 items judged (official 80)" in deviations
    pairs = metrics["pairwise_vs_base-b"]
    assert sum(pairs[k] for k in ("win", "tie", "loss", "error")) == 4
