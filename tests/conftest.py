"""Shared fixtures: a converted base model and a throwaway copy of the project as its own git + DVC repo."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# No internet here, and no telemetry from any tool under test.
os.environ.update(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    DVC_NO_ANALYTICS="1",
    GX_ANALYTICS_ENABLED="false",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    DO_NOT_TRACK="1",
    TOKENIZERS_PARALLELISM="false",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",  # a fresh PREFECT_HOME migrates its database first
)

# Started without job control (`nohup make test > log &` from a script), the suite inherits an ignored SIGINT, and so
# would every child (SIG_IGN survives exec): a test that interrupts a child would wait for nothing. A handler here
# resets to the default in each child at exec, as in a foreground shell.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    """Run a command with this interpreter's bin on PATH; on failure show its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **kw.pop("env", {})}
    env = {k: v for k, v in env.items() if v is not None}  # None in `env=` unsets a variable
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def project_files() -> list[str]:
    """Tracked and unignored files, minus anything a pipeline stage writes (a run in progress in this checkout
    may not have listed its outputs in .gitignore yet)."""
    from tunefold.pipeline.dag import StageGraph

    graph = StageGraph.load(ROOT / "dvc.yaml")
    produced = [Path(p) for st in graph.stages.values() for p in (*st.outs, *st.metrics, *st.plots)]
    out = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT).stdout
    return [
        f for f in out.splitlines()
        if (ROOT / f).is_file() and not any(Path(f) == p or p in Path(f).parents for p in produced)
    ]  # fmt: skip


def copy_project(dest: Path) -> Path:
    """A fresh clone-like copy of the project (tracked and unignored files only), committed in its own git repo."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded SmolLM2 converted by the real prepare_model stage (once per test session)."""
    from tasks.prepare_model import prepare_model
    from tunefold.config import ModelConfig

    out = tmp_path_factory.mktemp("model") / "base"
    prepare_model(ModelConfig(), out)
    return out


def shrink_training(repo: Path) -> None:
    """A small curriculum, two training rounds and DPO of a couple of steps each, one MT-Bench question with short
    answers: the real stages, on a test budget."""
    import yaml

    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    rounds = params["train"]["rounds"]
    rounds["r1"] |= {"max_steps": 2}
    rounds["r2"] |= {"epochs": 1, "max_steps": 1}
    params["train"] |= {"max_length": 256, "save_steps": 1}
    params["dpo"] |= {"init": "models/sft/r2/adapter", "max_steps": 2, "max_length": 256}
    params["curriculum"]["synthesize"] |= {"pool_size": 2, "max_iterations": 2}
    # score 12 instructions and keep them all, whatever their MFD: the rounds need records
    params["curriculum"]["difficulty"] |= {"min_mfd": -10.0, "max_instructions": 12}
    params["eval"]["mt_bench"]["question_ids"] = [5]
    params["eval"]["flask"]["limit"] = 1
    params["eval"]["audit"]["references"] = 1
    params["eval"] |= {"max_new_tokens": 16}
    for role in ("teacher", "student", "judge"):
        params["llm"][role] |= {"max_tokens": 64}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy (with two small training rounds) on which `dvc repro` has run the whole pipeline once."""
    repo = copy_project(tmp_path_factory.mktemp("repo") / "project")
    shrink_training(repo)
    run([sys.executable, "-m", "dvc", "repro"], repo)
    return repo
