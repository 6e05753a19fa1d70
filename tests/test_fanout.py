"""MT-Bench judging fanned out over a local Dask cluster (Prefect's Dask task runner, two worker processes, each
with its own embedded llama.cpp judge) gives the same judgments as judging in the stage's own process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunefold.eval.mtbench import answer_row

ROOT = Path(__file__).resolve().parents[1]


def _setup(tmp_path: Path, workers: int) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["eval"]["mt_bench"] |= {"question_ids": [1, 5], "pairwise": True}
    params["eval"]["fanout"] = {"workers": workers}
    params["eval"]["baseline"] = {"model_id": "base"}  # the answers written below
    params["llm"]["judge"] |= {"max_tokens": 48}
    params["llm"]["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / f"params-{workers}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _rows(path: Path) -> list[dict]:
    keep = ("question_id", "model", "model_1", "turn", "score", "judgment", "g1_winner", "g2_winner", "result")
    return [{k: r[k] for k in keep if k in r} for r in map(json.loads, path.read_text().splitlines())]


@pytest.mark.slow
def test_fanned_out_judging_matches_in_process(tmp_path: Path) -> None:
    from tasks import mt_bench

    answers = tmp_path / "answers"
    answers.mkdir()
    for model, text in (("candidate", "A clear and correct answer."), ("base", "I do not know.")):
        rows = [answer_row(q, model, [f"{text} ({q})", f"{text} Again."], 0.0) for q in (1, 5)]
        (answers / f"{model}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def judged_with(workers: int, name: str) -> dict:
        argv = ["--params", str(_setup(tmp_path, workers)), "--answers", str(answers)]
        assert mt_bench.main([*argv, "--out", str(tmp_path / name), "--metrics", str(tmp_path / f"{name}.json")]) == 0
        return json.loads((tmp_path / f"{name}.json").read_text())

    fan = judged_with(2, "fan")
    assert len(fan["llm_shards"]) == 2  # the work ran in two Dask workers, each with its own gateway
    assert sum(m["judge"]["calls_sent"] for m in fan["llm_shards"]) > 0
    assert not fan["llm"]  # the stage's own process neither called nor started a judge

    one = judged_with(0, "one")
    assert one["llm"]["judge"]["calls_sent"] == 0  # every request was answered by the workers and cached
    judge = fan["judge"]
    for name in (f"{judge}_single.jsonl", f"{judge}_pair.jsonl"):
        assert _rows(tmp_path / "fan" / name) == _rows(tmp_path / "one" / name)
    assert fan["candidate"] == one["candidate"] and fan["pairwise_vs_base"] == one["pairwise_vs_base"]


def _gen_params(tmp_path: Path, workers: int) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # transformers on both sides: fanned-out workers load the model with it, and the claim is about the fan-out
    params["eval"] |= {"max_new_tokens": 8, "batch_size": 1, "backend": "hf", "fanout": {"workers": workers}}
    params["eval"]["candidate"] = {"model_id": "candidate"}  # the base model on both sides: no adapter to train
    params["eval"]["baseline"] = {"model_id": "base"}
    params["eval"]["mt_bench"]["question_ids"] = [5, 7, 9]  # reasoning, math, coding: answered greedily
    params["eval"]["flask"]["limit"] = 3
    path = tmp_path / f"gen-{workers}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.slow
def test_fanned_out_generation_matches_in_process(base_model: Path, tmp_path: Path) -> None:
    """Two Dask workers, each loading the model once, answer the same greedy questions as the stage's own process,
    and the answers file comes out in question order with no part files left behind."""
    from tasks import generate

    def run(workers: int) -> tuple[dict, Path, Path]:
        mt, fl, m = tmp_path / f"mt{workers}", tmp_path / f"fl{workers}", tmp_path / f"gen{workers}.json"
        argv = ["--params", str(_gen_params(tmp_path, workers)), "--base", str(base_model), "--out", str(mt)]
        argv += ["--flask-out", str(fl), "--metrics", str(m)]
        assert generate.main(argv) == 0
        return json.loads(m.read_text()), mt, fl

    fan, fan_mt, fan_fl = run(2)
    one, one_mt, one_fl = run(0)
    for label in ("mt_bench/candidate", "flask/base"):
        assert fan[label]["shards"] == 2 and fan[label]["generated"] == 3 and "shards" not in one[label]

    def texts(path: Path) -> list:
        return [
            (r.get("question_id", r.get("idx")), r.get("choices", r.get("answer")))
            for r in map(json.loads, path.read_text().splitlines())
        ]

    for fan_dir, one_dir in ((fan_mt, one_mt), (fan_fl, one_fl)):
        for name in ("candidate.jsonl", "base.jsonl"):
            assert texts(fan_dir / name) == texts(one_dir / name)
        assert not list(fan_dir.glob(".*.part*"))
    assert [k for k, _ in texts(fan_mt / "candidate.jsonl")] == [5, 7, 9]


def test_parts_of_a_killed_fanned_out_run_are_folded_in(tmp_path: Path) -> None:
    """What shard workers wrote before a kill is kept (a torn last line dropped); parts of another model or setting
    are discarded; the answers file ends in item order."""
    from tasks.generate import Item, Job, _fold_parts

    items = [Item(k, [f"q{k}"], 0.0) for k in range(5)]
    job = Job("t", items, tmp_path / "m.jsonl", "fp1", lambda it, r: {"idx": it.key, "answer": r[0]})

    def part(name: str, fp: str, body: str) -> None:
        (tmp_path / f".m.{name}.jsonl").write_text(body)
        (tmp_path / f"..m.{name}.fingerprint").write_text(fp)

    (tmp_path / ".m.fingerprint").write_text("fp1")
    job.path.write_text('{"idx": 3, "answer": "a3"}\n')
    part("part0", "fp1", '{"idx": 4, "answer": "a4"}\n{"idx": 0, "answer": "a0"}\n{"idx": 2, "ans')
    part("part1", "fp1", '{"idx": 3, "answer": "other"}\n')
    part("part2", "fp0", '{"idx": 1, "answer": "stale"}\n')
    assert _fold_parts(job) == 2
    rows = [json.loads(x) for x in job.path.read_text().splitlines()]
    assert rows == [{"idx": 0, "answer": "a0"}, {"idx": 3, "answer": "a3"}, {"idx": 4, "answer": "a4"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.fingerprint", "m.jsonl"]
