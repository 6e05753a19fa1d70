"""FLASK format, parsing and aggregation on hand-written judgments with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunefold.errors import InputError
from tunefold.eval.flask import DIFFICULTIES, DOMAINS, SKILLS, Annotation, aggregate, load_instances, parse_skill_scores

MINI = Path(__file__).resolve().parents[1] / "data" / "benchmarks" / "flask_mini" / "flask_evaluation.jsonl"


def test_project_set_is_varied_and_valid() -> None:
    inst = load_instances(MINI)
    assert len(inst) >= 12 and all(i.annotated and len(i.skills) == 3 for i in inst)
    assert len({s for i in inst for s in i.skills}) == len(SKILLS)  # every skill appears
    assert {i.difficulty for i in inst} == set(DIFFICULTIES)
    assert len({d for i in inst for d in i.domains}) == len(DOMAINS)


def test_parse_skill_scores() -> None:
    skills = ["Factuality", "Conciseness", "Metacognition"]
    reply = 'Factuality: fine.\n{"Factuality": 4, "Conciseness": 5, "Metacognition": "N/A"}'
    assert parse_skill_scores(reply, skills).value == {"Factuality": 4.0, "Conciseness": 5.0, "Metacognition": None}
    assert not parse_skill_scores('{"Factuality": 4, "Conciseness": 9, "Metacognition": 2}', skills).ok
    assert "missing or invalid score for 'Metacognition'" in parse_skill_scores(
        '{"Factuality": 4, "Conciseness": 3}', skills).failure  # fmt: skip
    assert not parse_skill_scores("Scores: four, five", skills).ok
    # the last JSON object wins (a judge may quote an example first)
    two = '{"Factuality": 1, "Conciseness": 1, "Metacognition": 1} ... final: {"Factuality": 3, "Conciseness": 2, ' \
          '"Metacognition": 4}'  # fmt: skip
    assert parse_skill_scores(two, skills).value["Factuality"] == 3.0


def test_aggregate_counts_na_and_failures_apart() -> None:
    rows = [
        {"scores": {"Factuality": 4.0, "Conciseness": 2.0, "Metacognition": None},
         "domains": ["History", "Culture"], "difficulty": "expert_level_knowledge"},
        {"scores": {"Factuality": 2.0, "Readability": 5.0, "Comprehension": 3.0},
         "domains": ["Math"], "difficulty": "simple_lifestyle_knowledge"},
        {"scores": None, "domains": ["Math"], "difficulty": "simple_lifestyle_knowledge"},
    ]  # fmt: skip
    agg = aggregate(rows)
    assert agg["skill"]["Factuality"] == {"mean": 3.0, "n": 2}
    assert "Metacognition" not in agg["skill"] and agg["na"] == {"Metacognition": 1}
    assert agg["parse_failures"] == 1 and agg["instances"] == 3
    assert agg["domain"]["History"] == {"mean": 3.0, "n": 2} == agg["domain"]["Culture"]
    assert agg["domain"]["Math"] == {"mean": round(10 / 3, 3), "n": 3}
    assert agg["hard_skill"] == {"Conciseness": {"mean": 2.0, "n": 1}, "Factuality": {"mean": 4.0, "n": 1}}
    assert agg["skill_difficulty"]["Factuality|simple_lifestyle_knowledge"] == {"mean": 2.0, "n": 1}


def test_annotation_schema_rejects_made_up_labels() -> None:
    ok = {"skills": ["Factuality", "Completeness", "Readability"], "domains": ["Health"],
          "difficulty": "major_level_knowledge"}  # fmt: skip
    assert Annotation.model_validate(ok).domains == ["Health"]
    for bad in ({**ok, "skills": ["Factuality", "Factuality", "Readability"]}, {**ok, "domains": ["Cooking"]},
                {**ok, "skills": ["Factuality"]}, {**ok, "difficulty": "hard"}):  # fmt: skip
        with pytest.raises(ValueError):
            Annotation.model_validate(bad)


def test_official_format_and_bad_files(tmp_path: Path) -> None:
    official_style = tmp_path / "flask.jsonl"
    official_style.write_text(json.dumps({"idx": 3, "instruction": "Q?", "answer": "A.", "task": "t",
                                          "skill": "Factuality, Completeness, Readability", "domain": "History",
                                          "difficulty": "formal_education_knowledge"}) + "\n")  # fmt: skip
    (inst,) = load_instances(official_style)
    assert inst.skills == ["Factuality", "Completeness", "Readability"] and inst.domains == ["History"]
    unlabelled = tmp_path / "mine.jsonl"
    unlabelled.write_text(json.dumps({"instruction": "Explain tides."}) + "\n")
    assert not load_instances(unlabelled)[0].annotated
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "skill": ["Speed"]}) + "\n")
    with pytest.raises(InputError, match="unknown skill or domain"):
        load_instances(bad)
    with pytest.raises(InputError, match="no `instruction`"):
        (tmp_path / "q.jsonl").write_text('{"question": "x"}\n')
        load_instances(tmp_path / "q.jsonl")
