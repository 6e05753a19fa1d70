"""Retrain-and-evaluate cycles on a real project copy: the promotion gate, the registry and its git tags, the
workspace lock, `dvc checkout` of a promoted tag, a scheduled deployment that fires on a real Prefect server, and a
failed cycle that notifies a loopback webhook and leaves the champion untouched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from tests.conftest import copy_repo, prefect_home, run
from tunefold.pipeline.lock import WorkspaceLock

pytestmark = pytest.mark.slow
TUNEFOLD = [sys.executable, "-m", "tunefold.cli"]
EPHEMERAL = {"PREFECT_API_URL": None}
ADAPTER = "models/dpo/adapter/adapter_model.safetensors"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_params(repo: Path, **sections: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in sections.items():
        params[key] = params.get(key, {}) | value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def registry(repo: Path) -> list[dict]:
    path = repo / "registry/models.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def promoted_repo(reproduced_repo: Path, migrated_prefect_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy after its first cycle (the first model is always promoted when its judgments parse)."""
    repo = tmp_path_factory.mktemp("cycle") / "repo"
    copy_repo(reproduced_repo, repo)
    set_params(repo, cycle={"gate": {"max_failure_rate": 1.0}})
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "gate for the test"], repo)
    home = {"PREFECT_HOME": str(prefect_home(migrated_prefect_home, repo.parent / "prefect-home")), **EPHEMERAL}
    out = run([*TUNEFOLD, "cycle"], repo, env=home).stdout
    assert "model-v1: first model" in out
    return repo


@pytest.fixture
def repo(promoted_repo: Path, tmp_path: Path) -> Path:
    """This test's own copy of the promoted project."""
    copy_repo(promoted_repo, tmp_path / "repo")
    return tmp_path / "repo"


def popen_env(**extra: str) -> dict[str, str]:
    """The environment of a long-running child (`tunefold serve`, a worker, a cycle to kill): this venv on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


def test_first_cycle_promotes_records_and_tags(promoted_repo: Path, tmp_path: Path) -> None:
    repo = promoted_repo
    [entry] = registry(repo)
    assert entry["promoted"] and entry["tag"] == "model-v1" and entry["model_id"] == "model-v1"
    assert {c["name"] for c in entry["decision"]["checks"]} == {"failure_rate", "mt_bench_scored"}
    assert sha(repo / "models/champion/adapter/adapter_model.safetensors") == sha(repo / ADAPTER)
    assert "model-v1" in run(["git", "tag"], repo).stdout
    assert (repo / "registry.dvc").exists() and (repo / "models/champion.dvc").exists()
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout == ""
    lineage = entry["lineage"]
    assert set(lineage["sources"]) == {
        "data/sample/alpaca.jsonl",
        "data/sample/chat.jsonl",
        "data/sample/preferences.jsonl",
    }
    assert lineage["code_commit"] and lineage["chat_template"] and lineage["adapter"]["hash"]
    rounds = {"data/curriculum/rounds/r1.jsonl", "data/curriculum/rounds/r2.jsonl", "data/curriculum/plan"}
    assert rounds <= set(lineage["curriculum"]) and lineage["judge"]["mt_bench"]
    assert "tunefold-single" in lineage["judge_prompts"] and "flask" in lineage["judge_prompts"]
    data = lineage["training_data"]  # what each training stage read, hashed when it trained
    assert set(data) == {"r1", "r2", "dpo"} and all(h and len(h) == 16 for h in data.values()), data
    assert data["r1"] == sha(repo / "data/curriculum/rounds/r1.jsonl")[:16] != data["r2"]
    shown = run([*TUNEFOLD, "lineage", "model-v1"], repo).stdout
    assert f"training data: r1={data['r1']}, r2={data['r2']}, dpo={data['dpo']}" in shown
    assert shown.startswith("model-v1  (promoted: first model") and "sources: data/sample/alpaca.jsonl=" in shown
    assert "model-v1" in run([*TUNEFOLD, "lineage", "v9"], repo, check=False).stderr


def test_overlapping_and_unchanged_cycles_are_skipped(repo: Path, migrated_prefect_home: Path, tmp_path: Path) -> None:
    env = {"PREFECT_HOME": str(prefect_home(migrated_prefect_home, tmp_path / "prefect-home")), **EPHEMERAL}
    with WorkspaceLock(repo / ".tunefold/cycle.lock") as held:
        assert held.acquired
        proc = run([*TUNEFOLD, "cycle"], repo, env=env)
    assert "another cycle is running" in proc.stdout + proc.stderr
    assert "another cycle holds the workspace lock" in proc.stdout
    out = run([*TUNEFOLD, "cycle"], repo, env=env).stdout  # nothing changed since model-v1
    assert "candidate unchanged since model-v1" in out
    assert len(registry(repo)) == 1


@dataclass
class Challenger:
    """A second cycle, on new data, that was killed during training, run again to the end and rejected."""

    repo: Path
    v1_adapter: str  # sha256 of model-v1's adapter
    v1_data: str  # alpaca.jsonl as model-v1 saw it
    after_kill: dict[str, bool | int]  # what the workspace held right after the kill
    out: str  # the output of the cycle that finished


@pytest.fixture(scope="module")
def challenger(
    promoted_repo: Path, migrated_prefect_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Challenger:
    """One cycle on new data shared by the tests that inspect it: SIGKILLed as a whole (flow, dvc, trainer) during
    its first training stage, then run again, to the gate's rejection.

    A row is added to alpaca.jsonl. Round r1 gets a new run of 6 steps, long enough to be killed once its
    checkpoint-3 is written (the model-v1 run stopped at step 2). One MT-Bench question cannot show a difference (no
    interval to pair), and the pairwise judgment is against the base model, not the champion: the gate must reject,
    whatever the embedded judge's scores are."""
    work = tmp_path_factory.mktemp("challenger")
    repo = work / "repo"
    copy_repo(promoted_repo, repo)
    v1_adapter = sha(repo / ADAPTER)
    v1_data = (repo / "data/sample/alpaca.jsonl").read_text()
    row = {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow and blue."}
    (repo / "data/sample/alpaca.jsonl").write_text(v1_data + json.dumps(row) + "\n")
    # (The audit would reject the embedded judge first, and a few steps' noise in held-out loss could too; both are
    # switched off to exercise the tie rule end to end.)
    gate = {"max_failure_rate": 1.0, "mt_bench_tolerance": 100.0, "flask_tolerance": 5.0}
    gate |= {"heldout_loss_tolerance": 100.0, "reward_accuracy_tolerance": 1.0}
    set_params(repo, cycle={"gate": gate | {"require_trusted_judge": False}})
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["rounds"]["r1"] |= {"max_steps": 6, "learning_rate": 1.0e-4}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    champion = (repo / "models/champion/model.json").read_text()
    checkpoints = repo / "models/sft/r1/checkpoints"
    home = prefect_home(migrated_prefect_home, work / "prefect-home")
    env = popen_env(PREFECT_HOME=str(home))
    env.pop("PREFECT_API_URL", None)
    log = work / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*TUNEFOLD, "cycle"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 1200  # the stages before r1 re-run on the new data first
        while not (checkpoints / "checkpoint-3").exists():
            assert proc.poll() is None, "the cycle ended before it could be killed:\n" + log.read_text()
            assert time.monotonic() < deadline, "no checkpoint-3 of sft@r1:\n" + log.read_text()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with WorkspaceLock(repo / ".tunefold/cycle.lock") as lock:
        after_kill = {
            "r1_adapter_written": (repo / "models/sft/r1/adapter").exists(),
            "registry_entries": len(registry(repo)),
            "champion_unchanged": (repo / "models/champion/model.json").read_text() == champion,
            "lock_free": lock.acquired,
        }
    out = run([*TUNEFOLD, "cycle"], repo, env={"PREFECT_HOME": str(home), **EPHEMERAL}).stdout
    return Challenger(repo, v1_adapter, v1_data, after_kill, out)


def test_new_data_rejected_by_the_gate_then_checkout_restores_the_champion(
    challenger: Challenger, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"  # a copy: the checkout below changes the workspace
    copy_repo(challenger.repo, repo)
    first, second = registry(repo)
    assert not second["promoted"] and second["tag"].startswith("challenger-") and second["tag"] in challenger.out
    assert "no pairwise judgment against the champion" in second["reason"]
    assert second["sources"]["data/sample/alpaca.jsonl"] != first["sources"]["data/sample/alpaca.jsonl"]
    assert sha(repo / ADAPTER) != challenger.v1_adapter  # a new challenger was trained ...
    champion = repo / "models/champion/adapter/adapter_model.safetensors"
    assert sha(champion) == challenger.v1_adapter  # ... the champion stays
    assert second["tag"] in run(["git", "tag"], repo).stdout  # the rejected model stays inspectable

    run(["git", "checkout", "-q", "model-v1"], repo)
    run([sys.executable, "-m", "dvc", "checkout", "--force"], repo)
    assert sha(repo / ADAPTER) == challenger.v1_adapter
    assert (repo / "data/sample/alpaca.jsonl").read_text() == challenger.v1_data
    assert len(registry(repo)) == 1  # the registry as it was at model-v1


def test_cycle_killed_mid_training_resumes_from_its_checkpoint(challenger: Challenger) -> None:
    """SIGKILL of a whole cycle (flow, dvc, trainer) during a training stage: the registry, the champion and the
    lock survive as they were; the next cycle resumes training from the last checkpoint and decides."""
    repo, after_kill = challenger.repo, challenger.after_kill
    assert not after_kill["r1_adapter_written"], "training finished before the kill"
    assert after_kill["registry_entries"] == 1 and after_kill["champion_unchanged"]
    assert after_kill["lock_free"]  # a killed cycle holds nothing

    r1 = json.loads((repo / "metrics/sft/r1.json").read_text())
    assert r1["steps"] == 6 and r1["resumed_from_step"] >= 2, r1  # 2 when the kill tore checkpoint-3
    curve = [int(line.split("\t")[0]) for line in (repo / "metrics/sft/r1_loss.tsv").read_text().splitlines()[1:]]
    assert curve == list(range(1, 7))  # one loss curve across the killed and the resumed run
    first, second = registry(repo)
    assert second["tag"] in challenger.out and second["tag"] != first["tag"]


RUNS = """
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        runs = await c.read_flow_runs()
        print(json.dumps([[r.deployment_id is not None, r.state_type.value] for r in runs]))
asyncio.run(main())
"""


def stop_with_sigterm(proc: subprocess.Popen) -> float:
    """SIGTERM to a long-running child's process group, as systemd, Docker and Kubernetes stop a service; the
    seconds it took to exit (inf, and a SIGKILL, past 60)."""
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return float("inf")
    return time.monotonic() - start


def wait_for_deployment_run(repo: Path, server_env: dict[str, str], proc: subprocess.Popen, log: Path) -> None:
    """Until a flow run of a deployment has completed (the schedule fired and the run finished)."""
    deadline = time.time() + 240
    while time.time() < deadline:
        runs = json.loads(run([sys.executable, "-c", RUNS], repo, env=server_env).stdout.splitlines()[-1])
        if [True, "COMPLETED"] in runs:
            return
        assert [True, "FAILED"] not in runs and [True, "CRASHED"] not in runs, log.read_text()
        assert proc.poll() is None, log.read_text()
        time.sleep(3)
    raise AssertionError("no scheduled cycle completed:\n" + log.read_text())


def test_process_work_pool_runs_the_deployed_cycle(
    repo: Path,
    tmp_path: Path,
    prefect_server: dict[str, str],
) -> None:
    """`tunefold deploy --pool` on a process work pool; `prefect worker start` picks up the scheduled run."""
    set_params(repo, cycle={"interval_seconds": 5, "cron": None})
    prefect = str(Path(sys.executable).parent / "prefect")
    run([prefect, "work-pool", "create", "--type", "process", "cpu"], repo, env=prefect_server)
    out = run([*TUNEFOLD, "deploy", "--pool", "cpu"], repo, env=prefect_server).stdout
    assert "prefect worker start --pool cpu" in out
    env = popen_env(**prefect_server)
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [prefect, "worker", "start", "--pool", "cpu"],
        cwd=repo,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_deployment_run(repo, prefect_server, worker, tmp_path / "worker.log")
    finally:
        stopped_in = stop_with_sigterm(worker)  # while its server is up (without it, a worker ignores SIGTERM)
    log_text = (tmp_path / "worker.log").read_text()
    assert stopped_in < 30, f"the worker still ran {stopped_in:.0f} s after SIGTERM:\n{log_text}"
    assert len(registry(repo)) == 1  # the candidate is the champion: the run decided nothing


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        Hook.received.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_scheduled_cycle_fires_and_a_failed_cycle_notifies(
    repo: Path,
    tmp_path: Path,
    prefect_server: dict[str, str],
) -> None:
    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
    make_block = f"""
from prefect.blocks.notifications import CustomWebhookNotificationBlock
CustomWebhookNotificationBlock(name="ops", url={url!r}, json_data={{"text": "{{{{subject}}}}: {{{{body}}}}"}},
                               allow_private_urls=True).save("ops", overwrite=True)
"""
    run([sys.executable, "-c", make_block], repo, env=prefect_server)

    # A deployment served by `tunefold serve` on a 5-second interval: it fires, finds nothing new, completes.
    set_params(repo, cycle={"interval_seconds": 5, "cron": None, "notify_block": "custom-webhook/ops"})
    env = popen_env(**prefect_server)
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*TUNEFOLD, "serve"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_deployment_run(repo, prefect_server, server, tmp_path / "serve.log")
    finally:
        stopped_in = stop_with_sigterm(server)
    log_text = (tmp_path / "serve.log").read_text()
    assert stopped_in < 30, f"`tunefold serve` still ran {stopped_in:.0f} s after SIGTERM:\n{log_text}"
    assert len(registry(repo)) == 1  # nothing new: no decision

    # A cycle that fails (validation over its limit): the webhook hears of it, the champion and registry stay.
    set_params(repo, validate={"max_tokens": 40})
    proc = run([*TUNEFOLD, "cycle"], repo, check=False, env=prefect_server)
    assert proc.returncode != 0
    assert any("tunefold cycle failed" in m and "model-v1" in m for m in Hook.received), Hook.received
    assert len(registry(repo)) == 1
    assert json.loads((repo / "models/champion/model.json").read_text())["tag"] == "model-v1"
    hook.shutdown()
