"""One DAG, two runners: real `dvc repro` and the real Prefect flow, against a server on loopback."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_repo, prefect_home, prefect_server_at, run
from tunefold.data.records import read_records
from tunefold.data.subsets import prompt_key, unique_conversations
from tunefold.pipeline.dag import StageGraph

DVC = [sys.executable, "-m", "dvc"]
pytestmark = pytest.mark.slow


def dvc_edges(repo: Path) -> set[tuple[str, str]]:
    dot = run([*DVC, "dag", "--dot"], repo).stdout
    return {(a, b) for a, b in re.findall(r'"([^"]+)"\s*->\s*"([^"]+)"', dot)}


def test_flow_graph_is_dvc_graph() -> None:
    """The flow reads dvc.yaml; this fails if its idea of the graph ever drifts from DVC's."""
    ours = StageGraph.load(ROOT / "dvc.yaml").edges()
    theirs = dvc_edges(ROOT)
    assert ours == theirs or ours == {(b, a) for a, b in theirs}
    assert ("ingest", "validate") in ours and ("prepare_model", "validate") in ours


def test_sources_are_dvc_deps() -> None:
    from tunefold.config import load_params

    params = load_params(ROOT / "params.yaml")
    graph = StageGraph.load(ROOT / "dvc.yaml")
    assert graph.untracked_sources("ingest", [s.path for s in params.ingest.sources]) == []


def test_dvc_repro_runs_everything_then_nothing(reproduced_repo: Path) -> None:
    repo = reproduced_repo
    ingest = json.loads((repo / "metrics/ingest.json").read_text())
    validate = json.loads((repo / "metrics/validate.json").read_text())
    assert ingest["records_kept"] == validate["rows"] == validate["clean"] + validate["quarantined"]
    assert ingest["duplicates_normalized"] == 1
    assert (repo / "models/base/model.safetensors").exists()
    assert (repo / "reports/validate/report.md").exists()
    for stage in ("sft/r1", "sft/r2", "dpo"):
        assert (repo / f"models/{stage}/adapter/adapter_model.safetensors").exists()
    assert json.loads((repo / "metrics/sft/r2.json").read_text())["steps"] == 1
    dpo = json.loads((repo / "metrics/dpo.json").read_text())
    plan = json.loads((repo / "metrics/curriculum/plan.json").read_text())
    fractal = json.loads((repo / "metrics/fractal_pairs.json").read_text())
    assert fractal["pairs_in"] == plan["preference_pairs"]
    assert fractal["pairs_in"] == fractal["kept"] + fractal["dropped"] + fractal["contaminated"]
    assert dpo["pairs"] == fractal["kept"] and (fractal["dropped"] == 0 or fractal["filter_applied"])
    held_out_pairs = json.loads((repo / "metrics/holdout.json").read_text())["val_pairs"]  # the input's pairs
    assert dpo["pairs_by_source"]["sample_prefs"] == 12 - held_out_pairs - sum(
        json.loads(line)["record"]["metadata"].get("source_name") == "sample_prefs"
        for line in (repo / "data/fractal/dropped.jsonl").open()
    )
    assert [r["round"] for r in plan["rounds"]] == ["r1", "r2"] and all(r["records"] for r in plan["rounds"])
    sft_r1 = json.loads((repo / "metrics/sft/r1.json").read_text())
    assert (repo / "data/curriculum/rounds/r1.jsonl").read_text().count("\n") == sft_r1["conversations"]
    planned = read_records(repo / "data/curriculum/plan/planned.jsonl")
    for name in ("r1", "r2"):  # static rounds (the suite's params): each is its planned slice
        rows = read_records(repo / f"data/curriculum/rounds/{name}.jsonl")
        assert [r.id for r in rows] == [r.id for r in planned if r.metadata["planned_round"] == name]
        m = json.loads((repo / f"metrics/curriculum/round_{name}.json").read_text())
        assert m["mode"].startswith("planned slice") and m["records"] == len(rows)
    # the held-out split: made once after annotate, never trained on, measured by every training stage
    holdout = json.loads((repo / "metrics/holdout.json").read_text())
    assert holdout["records_in"] == validate["clean"] == holdout["contaminated"] + holdout["train"] + holdout["val"]
    assert holdout["val"] >= 8 and holdout["eval_questions_checked"] > 0
    val = read_records(repo / "data/holdout/val.jsonl")
    trained = read_records(repo / "data/fractal/preferences.jsonl") + [
        r for name in ("r1", "r2") for r in read_records(repo / f"data/curriculum/rounds/{name}.jsonl")
    ]
    assert not {prompt_key(r) for r in val} & {prompt_key(r) for r in trained}
    for stage in ("sft/r1", "sft/r2"):
        h = json.loads((repo / f"metrics/{stage}.json").read_text())["heldout"]
        assert h["items"] == len(unique_conversations(val))  # a pair's chosen side and its SFT twin count once
        assert all(math.isfinite(x) for x in [*h["start"].values(), *h["kept"].values()])
    assert dpo["heldout"]["items"] == holdout["val_pairs"] == sum(r.rejected is not None for r in val)
    mt = json.loads((repo / "metrics/mt_bench.json").read_text())
    judged = mt["candidate"]["overall"]
    assert judged["judged"] + judged["failures"] == 2  # one question, two turns: every rating accounted for
    assert sum(judged["failure_kinds"].values()) == judged["failures"]
    assert mt["comparability"]["comparable"] is False and "1 items judged (official 80)" in mt["comparability"]["line"]
    assert (repo / f"data/eval/model_judgment/{mt['judge']}_pair.jsonl").exists()
    flask = json.loads((repo / "metrics/flask.json").read_text())
    scored = flask["candidate"]
    assert scored["instances"] == 1 and (scored["skill"] or scored["failures"] == 1)
    summary = json.loads((repo / "reports/eval/summary.json").read_text())
    assert summary["mt_bench"]["judged"] + summary["mt_bench"]["failures"] == 2
    assert "spread" in {c["name"] for c in summary["audit"]["checks"]}  # the judge was audited, next to its scores
    html = (repo / "reports/eval/report.html").read_text()
    assert "data:image/png;base64," in html and "MT-Bench" in html
    history = (repo / "metrics/eval_history.jsonl").read_text().splitlines()
    assert len(history) == 1
    shown = run([*DVC, "plots", "show", "--json"], repo).stdout
    assert "metrics/sft/r1_loss.tsv" in shown and "metrics/dpo_loss.tsv" in shown
    assert "metrics/sft/r1_heldout.tsv" in shown
    assert "metrics/curriculum/plan_tasks.json" in shown and "metrics/curriculum/mfd_histogram.json" in shown
    again = run([*DVC, "repro"], repo).stdout
    assert "Data and pipelines are up to date" in again
    assert "Data and pipelines are up to date" in run([*DVC, "status"], repo).stdout


def test_an_adaptive_round_remeasures_with_the_previous_rounds_student(reproduced_repo: Path, tmp_path: Path) -> None:
    """With curriculum.plan.adaptive, round 1 (from the base) is still its planned slice; round 2 re-measures every
    planned instruction with the round 1 adapter: each MFD is the kept target score minus the new student answer's
    rating, the round has at most its planned size (fitted ones left out), and every planned instruction is
    accounted for in the candidates file; sft@r2 then trains on it."""
    repo = tmp_path / "repo"
    copy_repo(reproduced_repo, repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["curriculum"]["plan"]["adaptive"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([*DVC, "repro", "sft@r2"], repo).stdout
    assert "Running stage 'curriculum_round@r2'" in out and "Stage 'sft@r1' didn't change, skipping" in out
    plan = json.loads((repo / "metrics/curriculum/plan.json").read_text())
    planned = read_records(repo / "data/curriculum/plan/planned.jsonl")
    r1 = read_records(repo / "data/curriculum/rounds/r1.jsonl")
    assert [r.id for r in r1] == [r.id for r in planned if r.metadata["planned_round"] == "r1"]
    m1 = json.loads((repo / "metrics/curriculum/round_r1.json").read_text())
    m2 = json.loads((repo / "metrics/curriculum/round_r2.json").read_text())
    assert m1["mode"].startswith("planned slice") and m2["mode"] == "re-measured with models/sft/r1/adapter"
    assert m2["planned_slice"] == plan["rounds"][1]["records"]
    r2 = read_records(repo / "data/curriculum/rounds/r2.jsonl")
    assert 0 < len(r2) == m2["records"] <= m2["planned_slice"]
    before = {r.id: r for r in planned}
    for r in r2:
        assert r.metadata["mfd"] == r.metadata["teacher_score"] - r.metadata["student_score"] > -10.0
        if r.id in before:
            assert r.metadata["mfd_planned"] == before[r.id].metadata["mfd"] and r.response == before[r.id].response
    assert len({r.metadata["student_response"] for r in r2} - {p.metadata["student_response"] for p in planned})
    rows = [json.loads(line) for line in (repo / "data/curriculum/round_details/r2/candidates.jsonl").open()]
    assert sorted(row["id"] for row in rows if row["picked"]) == sorted(r.id for r in r2)
    assert all(row["picked"] or row["why"] for row in rows)
    # a round short of its budget (the student fits too many planned instructions) asks the teacher for exactly the
    # missing number of new ones, measured with the same student; each attempt is logged, only hard ones join
    new = [r for r in r2 if r.id not in before]
    assert m2["new_instructions"] == len(new) and len(rows) == len(before) + len(new)
    assert all(r.metadata["origin"] == "tapir_round_expansion" and r.metadata["mfd"] > 0 for r in new)
    log = repo / "data/curriculum/round_details/r2/expansion_log.jsonl"
    planned_picks = len(r2) - len(new)
    if planned_picks < m2["planned_slice"]:
        attempts = [json.loads(line) for line in log.open()]
        assert len(attempts) == m2["planned_slice"] - planned_picks
        assert sum(a["decision"] == "kept" for a in attempts) == len(new)
    else:  # enough planned instructions were still hard: no expansion (the suite's min_mfd keeps all)
        assert not log.exists() and not new
    trained = json.loads((repo / "metrics/sft/r2.json").read_text())
    digest = hashlib.sha256((repo / "data/curriculum/rounds/r2.jsonl").read_bytes()).hexdigest()[:16]
    assert trained["conversations"] == len(r2) and trained["data_sha256"] == digest


def test_changing_round_two_does_not_retrain_round_one(reproduced_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy_repo(reproduced_repo, repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["rounds"]["r2"]["learning_rate"] = 3.0e-4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([*DVC, "repro", "dpo"], repo).stdout  # the training stages and what they need; evaluation is not asked
    assert "Stage 'sft@r1' didn't change, skipping" in out
    assert "Stage 'curriculum_round@r2' didn't change, skipping" in out  # it reads only the round's data and init
    assert "Running stage 'sft@r2'" in out and "Running stage 'dpo'" in out


def test_dvc_push_to_the_default_local_remote(reproduced_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "project"
    copy_repo(reproduced_repo, repo)
    out = run([*DVC, "push"], repo).stdout
    store = tmp_path / "tunefold-dvc-store"
    assert store.is_dir() and any(store.rglob("*")), out
    shutil.rmtree(repo / "models")
    run([*DVC, "pull"], repo)
    assert (repo / "models/dpo/adapter/adapter_model.safetensors").exists()


def test_changing_a_param_reruns_only_downstream(reproduced_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy_repo(reproduced_repo, repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["validate"]["max_tokens"] = 4096
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([*DVC, "repro"], repo).stdout
    assert "Running stage 'validate'" in out and "Stage 'sft@r1' didn't change, skipping" in out
    assert "Running stage 'ingest'" not in out and "Running stage 'prepare_model'" not in out
    assert "Data and pipelines are up to date" in run([*DVC, "status"], repo).stdout


@dataclass
class FlowRun:
    repo: Path
    server: dict[str, str]  # PREFECT_API_URL and PREFECT_HOME of the server the run reported to
    logs: str
    secret: str


@pytest.fixture(scope="module")
def flow_run(
    reproduced_repo: Path, migrated_prefect_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowRun]:
    """One `tunefold run` (the Prefect flow) against a real server, shared by the tests that inspect it: the judge
    becomes a keyed endpoint (a real llama.cpp server started here, the same weights and settings as the embedded
    one) whose key is only in the environment of the run. Every stage that asks the judge is stale (the curriculum
    and the evaluation); the data stages are not. The judge's replies are the same from either server (the cache
    keys a served model by its weights, fixed-width steps make 16-bit replies independent of their company), so
    the curriculum comes out identical and the training stages are skipped: a changed data path re-run through the
    flow is the cycle's challenger (tests/test_cycle.py)."""
    from tunefold.config import EmbeddedServerConfig
    from tunefold.llm.server import EmbeddedServer

    work = tmp_path_factory.mktemp("flow")
    repo = work / "project"
    copy_repo(reproduced_repo, repo)
    secret = f"sk-tunefold-{uuid.uuid4().hex}"  # made here, so not even this test file contains it
    home = prefect_home(migrated_prefect_home, work / "prefect-home")
    with prefect_server_at(home, work / "server.log") as server:
        judge = EmbeddedServer(EmbeddedServerConfig()).start()
        try:
            params = yaml.safe_load((repo / "params.yaml").read_text())
            # llama.cpp constrains JSON to a schema: ask for that, as a user of such a server would
            params["llm"]["judge"] |= {
                "base_url": judge.base_url,
                "model": judge.alias,
                "api_key_env": "JUDGE_KEY",
                "json_mode": "json_object_schema",
            }
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            cmd = [sys.executable, "-m", "tunefold.cli", "--root", str(repo), "run"]
            proc = run(cmd, repo, env={**server, "JUDGE_KEY": secret})
        finally:
            judge.stop()
        logs = proc.stdout + proc.stderr
        (repo / "run.log").write_text(logs)
        yield FlowRun(repo, server, logs, secret)


def test_prefect_flow_against_real_server(flow_run: FlowRun) -> None:
    repo, logs = flow_run.repo, flow_run.logs
    for stage in ("prepare_model", "ingest", "validate", "holdout", "sft@r1", "sft@r2", "dpo", "generate"):
        assert f"Stage '{stage}' didn't change, skipping" in logs, stage
    # the data stages were settled by the run's `dvc status`; DVC was asked about the training stages, whose
    # upstream re-ran, and found their inputs the same
    assert "Stage 'validate' didn't change, skipping (dvc status before the run)" in logs
    assert "Stage 'sft@r1' didn't change, skipping (dvc status" not in logs
    for stage in (
        "annotate",
        "synthesize",
        "difficulty",
        "refine",
        "plan_curriculum",
        "mt_bench",
        "flask",
        "judge_audit",
    ):
        assert f"Running stage '{stage}'" in logs, stage
    assert "Data and pipelines are up to date" in run([*DVC, "status"], repo).stdout
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["mt_bench"]["params"]["params.yaml"]["llm.judge"]["api_key_env"] == "JUDGE_KEY"

    query = """
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        flows = await c.read_flow_runs()
        tasks = await c.read_task_runs()
        arts = await c.read_artifacts()
        print(json.dumps({"flows": [[f.name, f.state_type.value] for f in flows],
                          "tasks": sorted([t.name, t.state_type.value] for t in tasks),
                          "artifacts": sorted(a.key for a in arts if a.key)}))
asyncio.run(main())
"""
    found = json.loads(run([sys.executable, "-c", query], repo, env=flow_run.server).stdout.strip().splitlines()[-1])
    assert [state for _, state in found["flows"]] == ["COMPLETED"]
    stages = sorted(
        [
            "prepare_model",
            "ingest",
            "validate",
            "annotate",
            "holdout",
            "synthesize",
            "difficulty",
            "refine",
            "plan_curriculum",
            "fractal_pairs",
            "curriculum_round@r1",
            "curriculum_round@r2",
            "sft@r1",
            "sft@r2",
            "dpo",
            "generate",
            "mt_bench",
            "flask",
            "judge_audit",
            "sentence_scores",
            "report",
        ]
    )
    assert found["tasks"] == [[name, "COMPLETED"] for name in stages]
    assert {"stage-ingest", "stage-validate", "stage-prepare-model", "stage-sft-r1", "stage-dpo"} <= set(
        found["artifacts"]
    )


def test_api_key_lands_nowhere_in_a_pipeline_run(flow_run: FlowRun) -> None:
    """The judge as a keyed endpoint: after the flow run (its evaluation stages included), the key is in no file of
    the workspace (params, dvc.lock, metrics, judgments, reports, cache, the run's log) nor of the Prefect server's
    home (its database holds the run's logs and artifacts)."""
    assert "Running stage 'mt_bench'" in flow_run.logs and "Running stage 'flask'" in flow_run.logs
    home = Path(flow_run.server["PREFECT_HOME"])
    files = [p for root in (flow_run.repo, home) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts]
    assert any(p.suffix == ".db" for p in files if home in p.parents)  # the server's database was scanned too
    leaks = [p for p in files if flow_run.secret.encode() in p.read_bytes()]
    assert leaks == []


def test_failing_stage_fails_the_flow_without_a_server(
    reproduced_repo: Path, migrated_prefect_home: Path, tmp_path: Path
) -> None:
    """Ephemeral Prefect (no server); a validation over its limit fails the run with the stage's message."""
    repo = tmp_path / "repo"
    copy_repo(reproduced_repo, repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["validate"]["max_tokens"] = 40
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"PREFECT_HOME": str(prefect_home(migrated_prefect_home, tmp_path / "prefect-home")), "PREFECT_API_URL": None}
    proc = run([sys.executable, "-m", "tunefold.cli", "run"], repo, check=False, env=env)
    assert proc.returncode != 0
    logs = proc.stdout + proc.stderr
    assert "failed validation, above validate.max_reject_fraction=0.2" in logs
    assert "data/validate/quarantine.jsonl" in logs
