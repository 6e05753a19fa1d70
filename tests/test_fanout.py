"""MT-Bench judging fanned out over a local Dask cluster (Prefect's Dask task runner, two worker processes, each
with its own embedded llama.cpp judge) gives the same judgments as judging in the stage's own process."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunefold.mtbench import answer_row

ROOT = Path(__file__).resolve().parents[1]


def _setup(tmp_path: Path, workers: int) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["eval"]["mt_bench"] |= {"question_ids": [1, 5], "pairwise": True}
    params["eval"]["fanout"] = {"workers": workers}
    params["llm"]["judge"] |= {"max_tokens": 48}
    params["llm"]["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / f"params-{workers}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _rows(path: Path) -> list[dict]:
    keep = ("question_id", "model", "model_1", "turn", "score", "judgment", "g1_winner", "g2_winner", "result")
    return [{k: r[k] for k in keep if k in r} for r in map(json.loads, path.read_text().splitlines())]


def test_fanned_out_judging_matches_in_process(tmp_path: Path) -> None:
    from tasks import mt_bench

    answers = tmp_path / "answers"
    answers.mkdir()
    for model, text in (("candidate", "A clear and correct answer."), ("base", "I do not know.")):
        rows = [answer_row(q, model, [f"{text} ({q})", f"{text} Again."], 0.0) for q in (1, 5)]
        (answers / f"{model}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    common = ["--answers", str(answers)]
    assert mt_bench.main(["--params", str(_setup(tmp_path, 2)), *common, "--out", str(tmp_path / "fan"),
                          "--metrics", str(tmp_path / "fan.json")]) == 0  # fmt: skip
    fan = json.loads((tmp_path / "fan.json").read_text())
    assert len(fan["llm_shards"]) == 2  # the work ran in two Dask workers, each with its own gateway
    assert sum(m["judge"]["calls_sent"] for m in fan["llm_shards"]) > 0

    assert mt_bench.main(["--params", str(_setup(tmp_path, 0)), *common, "--out", str(tmp_path / "one"),
                          "--metrics", str(tmp_path / "one.json")]) == 0  # fmt: skip
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["llm"]["judge"]["calls_sent"] == 0  # every request was answered by the workers and cached
    judge = fan["judge"]
    for name in (f"{judge}_single.jsonl", f"{judge}_pair.jsonl"):
        assert _rows(tmp_path / "fan" / name) == _rows(tmp_path / "one" / name)
    assert fan["candidate"] == one["candidate"] and fan["pairwise_vs_base"] == one["pairwise_vs_base"]
