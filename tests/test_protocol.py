"""Evaluation protocols: the published settings, and the comparability record every score carries."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED
from tunefold.config import EvalConfig, LLMConfig, MTBenchSettings
from tunefold.errors import InputError
from tunefold.eval.protocol import answer_max_tokens, comparability, judge_settings

OFFICIAL = SHARED / "benchmarks" / "mt_bench"
FILES = {
    "questions": OFFICIAL / "question.jsonl",
    "references": OFFICIAL / "reference_answer" / "gpt-4.jsonl",
    "judge_prompts": OFFICIAL / "judge_prompts.jsonl",
}


def _official(**kw: object) -> EvalConfig:
    return EvalConfig(protocol="official", mt_bench=MTBenchSettings(judge_prompts=str(FILES["judge_prompts"])), **kw)


@pytest.mark.skipif(not OFFICIAL.exists(), reason="FastChat's MT-Bench files are not in ../shared")
def test_official_protocol_with_the_published_files_and_judge_is_comparable() -> None:
    cfg = _official(max_new_tokens=128, judge_output="json")  # both ignored under official
    judge = judge_settings(cfg, LLMConfig(), "mt_bench", "gpt-4")
    assert (judge.output, judge.max_tokens, answer_max_tokens(cfg)) == ("text", 2048, 1024)
    record = comparability("mt_bench", cfg, judge, FILES, judged_items=80)
    assert record == {
        "protocol": "official",
        "comparable": True,
        "deviations": [],
        "line": "comparable to published MT-Bench",
    }
    small = judge_settings(cfg, LLMConfig(), "mt_bench", "smollm2-135m-instruct")
    subset = comparability("mt_bench", cfg, small, FILES, judged_items=10)
    assert subset["deviations"] == ["judge smollm2-135m-instruct (official gpt-4)", "10 items judged (official 80)"]
    assert subset["line"].startswith("not comparable to published MT-Bench: judge smollm2")


def test_quick_protocol_lists_every_deviation(tmp_path: Path) -> None:
    mini = tmp_path / "question.jsonl"
    mini.write_text('{"question_id": 1, "category": "writing", "turns": ["x"]}\n')
    cfg = EvalConfig(max_new_tokens=128, judge_output="json")
    judge = judge_settings(cfg, LLMConfig(), "mt_bench", "smollm2")
    record = comparability("mt_bench", cfg, judge, {"questions": mini, "references": None, "judge_prompts": None}, 1)
    assert record["protocol"] == "quick" and not record["comparable"]
    assert record["deviations"] == [
        "answers capped at 128 tokens (official 1024)",
        "judge replies capped at 512 tokens (official 2048)",
        "judge asked for JSON output (official: the protocol's text format)",
        "judge smollm2 (official gpt-4)",
        "questions file question.jsonl is not the published one (80 rows)",
        "no references file (official: the published one)",
        "no judge prompts file (official: the published one)",
        "1 items judged (official 80)",
    ]


def test_official_protocol_needs_fastchats_prompts() -> None:
    with pytest.raises(InputError, match=r"eval\.mt_bench\.judge_prompts"):
        judge_settings(EvalConfig(protocol="official"), LLMConfig(), "mt_bench", "gpt-4")
    flask = judge_settings(EvalConfig(protocol="official"), LLMConfig(), "flask", "gpt-4-0613")
    assert (flask.max_tokens, flask.output) == (1024, "text")


def test_bootstrap_intervals_resample_questions_and_pair_models() -> None:
    from tunefold.eval.uncertainty import paired_interval, per_question_means, question_interval

    assert question_interval({1: [7.0]}) is None
    steady = question_interval({q: [6.0, 6.0] for q in range(10)})
    assert steady == (6.0, 6.0)
    spread = question_interval({q: [float(q % 10 + 1)] for q in range(40)}, seed=1)
    assert spread is not None and 4.5 < spread[0] < 5.5 < spread[1] < 6.5  # mean 5.5, n = 40
    assert question_interval({q: [float(q % 10 + 1)] for q in range(40)}, seed=1) == spread  # seeded
    a = {str(q): 6.0 + (q % 3) for q in range(30)}
    shifted = paired_interval(a, {q: v - 1.0 for q, v in a.items()})
    assert shifted == {"difference": 1.0, "low": 1.0, "high": 1.0, "questions": 30}  # same questions, +1 each
    noisy = paired_interval(a, {q: 7.0 for q in a})
    assert noisy is not None and noisy["low"] < 0 < noisy["high"]  # no difference on average: zero inside
    assert paired_interval({"1": 5.0}, {"1": 4.0}) is None
    rows = [{"question_id": 3, "score": 8}, {"question_id": 3, "score": 6}, {"question_id": 4, "score": -1}]
    assert per_question_means(rows) == {"3": 7.0}
