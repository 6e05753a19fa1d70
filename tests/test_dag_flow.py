"""The pipeline flow as a DAG: a tiny DVC project of shell stages (a -> b, a -> c, b + c -> d) run by the real
flow against a real Prefect server on loopback, then read back from the server's API."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import ROOT, run
from tunefold.pipeline.dag import Schedule, Stage, StageGraph
from tunefold.pipeline.versioning import NO_GIT, git_version

DVC = [sys.executable, "-m", "dvc"]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]

# Each stage records when it ran and what it read; `fail` exits 3, `flaky` fails on its first attempt only.
STAGE_PY = """\
import json, os, sys, time
name, seconds, mode, *deps = sys.argv[1:]
if mode == "fail" or (mode == "flaky" and not os.path.exists(name + ".attempted")):
    open(name + ".attempted", "w").close()
    sys.exit(3)
start = time.time()
time.sleep(float(seconds))
inputs = [open(d).read() for d in deps]
with open(name + ".json", "w") as f:
    json.dump({"start": start, "end": time.time(), "inputs": inputs}, f)
"""


def make_project(root: Path, modes: dict[str, str], retries: dict[str, int] | None = None) -> Path:
    """a -> b, a -> c, b + c -> d; b and c sleep 2 s. Committed in its own git repo with DVC initialised."""
    graph = {"a": ("0", []), "b": ("2", ["a"]), "c": ("2", ["a"]), "d": ("0", ["b", "c"])}
    stages = {
        name: {
            "cmd": f"python stage.py {name} {seconds} {modes.get(name, 'ok')} " + " ".join(f"{u}.json" for u in ups),
            "deps": ["stage.py", *(f"{u}.json" for u in ups)],
            "outs": [f"{name}.json"],
        }
        for name, (seconds, ups) in graph.items()
    }
    root.mkdir(parents=True)
    (root / "stage.py").write_text(STAGE_PY)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    orchestration = {"retries": retries or {}, "retry_delay_seconds": 0}
    (root / "params.yaml").write_text(yaml.safe_dump({"orchestration": orchestration}))
    (root / ".gitignore").write_text("*.attempted\n")
    run(["git", "init", "-q", "-b", "main"], root)
    run([*DVC, "init", "-q"], root)
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-qm", "init"], root)
    return root


def run_flow(repo: Path, server: dict[str, str]) -> tuple[int, str]:
    """The real flow in its own process, as `tunefold run` starts it; returns its exit code and output."""
    code = (
        "import sys; from flows.pipeline import pipeline; "
        "state = pipeline(root=sys.argv[1], max_parallel=2, return_state=True); "
        "print(state.message); sys.exit(0 if state.is_completed() else 1)"
    )
    proc = run([sys.executable, "-c", code, str(repo)], ROOT, check=False, env={**server, "PYTHONPATH": str(ROOT)})
    return proc.returncode, proc.stdout + proc.stderr


def api(server: dict[str, str], path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.post(f"{server['PREFECT_API_URL']}/{path}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def flow_runs(server: dict[str, str], repo: Path) -> list[dict[str, Any]]:
    """The pipeline's flow runs on this project, oldest first."""
    runs = [r for r in api(server, "flow_runs/filter") if r["parameters"].get("root") == str(repo)]
    return sorted(runs, key=lambda r: r["created"])


def task_runs(server: dict[str, str], flow_run: dict[str, Any], expected: int) -> dict[str, dict[str, Any]]:
    """The flow run's task runs by name, once the server has recorded all of them in a final state."""
    body = {"flow_runs": {"id": {"any_": [flow_run["id"]]}}}
    deadline = time.time() + 30
    while True:
        runs = api(server, "task_runs/filter", body)
        final = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED") or r["state_name"] == "NotReady"]
        if len(final) == expected or time.time() > deadline:
            return {r["name"]: r for r in runs}
        time.sleep(0.5)


def upstream_names(runs: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """Each task run's `wait_for` inputs, as task run names."""
    names = {r["id"]: name for name, r in runs.items()}
    return {name: {names[i["id"]] for i in r["task_inputs"].get("wait_for", [])} for name, r in runs.items()}


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def dvc_changed(repo: Path) -> set[str]:
    return set(json.loads(run([*DVC, "status", "--json"], repo).stdout))


def test_stages_run_as_a_graph_and_runs_and_deployments_are_versioned(
    tmp_path: Path,
    prefect_server: dict[str, str],
) -> None:
    repo = make_project(tmp_path / "proj", {})
    commit = run(["git", "rev-parse", "--short", "HEAD"], repo).stdout.strip()
    params_tag = "params:" + sha12(repo / "params.yaml")

    code, logs = run_flow(repo, prefect_server)
    assert code == 0, logs
    (first,) = flow_runs(prefect_server, repo)
    assert first["state_type"] == "COMPLETED"
    assert first["flow_version"] == commit  # committed and clean when it started
    assert {params_tag, "dvc.lock:none"} <= set(first["tags"])

    runs = task_runs(prefect_server, first, 4)
    assert {n: r["state_type"] for n, r in runs.items()} == dict.fromkeys("abcd", "COMPLETED")
    assert upstream_names(runs) == {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}}
    b, c, d = (json.loads((repo / f"{n}.json").read_text()) for n in "bcd")
    assert b["start"] < c["end"] and c["start"] < b["end"], (b, c)  # b and c ran side by side
    assert d["start"] >= max(b["end"], c["end"])
    keys = {a["key"] for a in api(prefect_server, "artifacts/filter")}
    assert {"stage-a", "stage-b", "stage-c", "stage-d"} <= keys
    assert "Data and pipelines are up to date" in run([*DVC, "status"], repo).stdout

    lock_tag = "dvc.lock:" + sha12(repo / "dvc.lock")  # the run wrote dvc.lock: the worktree is now dirty
    outputs = {n: (repo / f"{n}.json").read_bytes() for n in "abcd"}
    code, logs = run_flow(repo, prefect_server)
    assert code == 0, logs
    for name in "abcd":
        assert f"Stage '{name}' didn't change, skipping" in logs
    assert {n: (repo / f"{n}.json").read_bytes() for n in "abcd"} == outputs
    assert "dvc status: 4 of 4 stages up to date" in logs  # settled by one status: no DVC start per stage
    second = flow_runs(prefect_server, repo)[1]
    assert second["state_type"] == "COMPLETED"
    assert second["flow_version"] == f"{commit}-dirty"
    assert {params_tag, lock_tag} <= set(second["tags"])

    # c's command changes: only c is stale before the run, yet d (below it) must still be asked, and re-runs
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    dvc_yaml["stages"]["c"]["cmd"] = dvc_yaml["stages"]["c"]["cmd"].replace(" 2 ", " 1 ")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    assert dvc_changed(repo) == {"c"}
    code, logs = run_flow(repo, prefect_server)
    assert code == 0, logs
    assert "dvc status: 2 of 4 stages up to date" in logs
    assert "Running stage 'c'" in logs and "Running stage 'd'" in logs and "Running stage 'b'" not in logs
    assert {n: (repo / f"{n}.json").read_bytes() == outputs[n] for n in "abcd"} == {
        "a": True,
        "b": True,
        "c": False,
        "d": False,
    }
    assert "Data and pipelines are up to date" in run([*DVC, "status"], repo).stdout

    # `tunefold deploy` versions the cycle's deployment by the checkout it deploys from, the same way
    api(prefect_server, "work_pools/", {"name": "cpu", "type": "process"})
    run(
        [sys.executable, "-m", "tunefold.cli", "--root", str(ROOT), "deploy", "--pool", "cpu"], ROOT, env=prefect_server
    )
    (deployment,) = api(prefect_server, "deployments/filter")
    ours = run(["git", "rev-parse", "--short", "HEAD"], ROOT).stdout.strip()
    dirty = run(["git", "status", "--porcelain", "--", "."], ROOT).stdout.strip()
    assert deployment["version"] == ours + ("-dirty" if dirty else "")
    assert set(deployment["tags"]) == {f"params:{sha12(ROOT / 'params.yaml')}", f"dvc.lock:{sha12(ROOT / 'dvc.lock')}"}


def test_a_failed_stage_stops_its_downstream_only(
    tmp_path: Path,
    prefect_server: dict[str, str],
) -> None:
    """b fails; c, independent of b, fails once and passes on its retry; d (after b and c) never runs."""
    repo = make_project(tmp_path / "proj", {"b": "fail", "c": "flaky"}, retries={"c": 1})
    code, logs = run_flow(repo, prefect_server)
    assert code != 0
    assert "stage b failed" in logs and "b 2 fail a.json, exited with 3" in logs
    assert "not run (upstream failed): d" in logs
    (flow_run,) = flow_runs(prefect_server, repo)
    assert flow_run["state_type"] == "FAILED"
    runs = task_runs(prefect_server, flow_run, 4)
    assert {n: r["state_name"] for n, r in runs.items()} == {
        "a": "Completed",
        "b": "Failed",
        "c": "Completed",
        "d": "NotReady",
    }
    assert runs["c"]["run_count"] == 2 and runs["d"]["run_count"] == 0
    assert upstream_names(runs)["d"] == {"b", "c"}
    assert not (repo / "d.json").exists()
    assert dvc_changed(repo) == {"b", "d"}  # what finished is recorded; a re-run resumes at b


def test_schedule_bounds_parallelism_and_keeps_the_gpu_to_one_stage() -> None:
    order = ["a", "sft@r1", "sft@r2", "generate", "x", "y"]
    upstream = {"a": set(), **{s: {"a"} for s in order[1:]}}
    gpu = {s: "gpu" for s in ("sft@r1", "sft@r2", "generate")}
    schedule = Schedule(order, upstream, max_parallel=3, resource=gpu)
    assert schedule.startable() == ["a"]
    schedule.start("a")
    assert schedule.startable() == []
    schedule.finish("a", ok=True)
    assert schedule.startable() == ["sft@r1", "x", "y"]  # one GPU stage; the others wait for the GPU
    for name in ("sft@r1", "x", "y"):
        schedule.start(name)
    schedule.finish("x", ok=True)
    assert schedule.startable() == []  # a free slot, but sft@r2 and generate still need the GPU
    schedule.finish("sft@r1", ok=False)
    assert schedule.startable() == ["sft@r2"]
    assert schedule.blocked() == []


def test_settled_stages_have_nothing_stale_at_or_above_them() -> None:
    graph = StageGraph(
        {name: Stage(name, "true", (), (), (), (), ()) for name in "abcde"},
        {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b"}, "e": {"d", "c"}},
    )
    order = graph.order()
    assert graph.settled(order, set()) == set("abcde")
    assert graph.settled(order, {"b"}) == {"a", "c"}  # d and e are asked: b's new outputs may change them
    assert graph.settled(order, {"c", "d"}) == {"a", "b"}
    assert graph.settled(order, None) == set()  # `dvc status` failed: every stage is asked
    assert graph.settled(order, {"dvc.yaml:x"}) == set()  # a name this graph does not know: the same


def test_schedule_blocks_everything_downstream_of_a_failure() -> None:
    order = ["a", "b", "c", "d", "e"]
    upstream = {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b"}, "e": {"d", "c"}}
    schedule = Schedule(order, upstream, max_parallel=2)
    schedule.start("a")
    schedule.finish("a", ok=True)
    assert schedule.startable() == ["b", "c"]
    schedule.start("b")
    schedule.start("c")
    schedule.finish("b", ok=False)
    schedule.finish("c", ok=True)
    assert schedule.startable() == [] and schedule.blocked() == ["d", "e"]


def test_git_version_outside_a_repository_clean_and_dirty(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert git_version(tmp_path) == NO_GIT
    run(["git", "init", "-q"], tmp_path)
    run([*GIT, "add", "-A"], tmp_path)
    run([*GIT, "commit", "-qm", "init"], tmp_path)
    commit = run(["git", "rev-parse", "--short", "HEAD"], tmp_path).stdout.strip()
    assert git_version(tmp_path) == commit
    (tmp_path / "new").write_text("y")  # untracked and not ignored: the tree differs from the commit
    assert git_version(tmp_path) == f"{commit}-dirty"
