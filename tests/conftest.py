"""Shared fixtures: a converted base model and a throwaway copy of the project as its own git + DVC repo."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


# The order in which `make test`'s two workers take the files (`--dist loadfile --no-loadscope-reorder`: one file
# per unit, so its module fixtures are built once; the next file to whichever worker is free): the full pipeline
# run first (`reproduced_repo`, built once for both workers), the long files that do not need it next, so the
# other worker is busy while it is built (first one that needs no converted model either: `prepared_repo` is being
# built too), then the cycle tests (the other long file that starts from it: begun early, it does not leave one
# worker alone at the end), then the rest in collection order.
FILE_ORDER = [
    "test_pipeline.py",
    "test_curriculum.py",
    "test_training.py",
    "test_cycle.py",
    "test_params_read.py",
    "test_fanout.py",
    "test_generate.py",
    "test_gateway.py",
    "test_dag_flow.py",
    "test_shutdown.py",
    "test_mtbench.py",
    "test_judge_audit.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files in FILE_ORDER first, in that order; the rest keep theirs (the sort is stable)."""
    rank = {name: i for i, name in enumerate(FILE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FILE_ORDER)))


def shared(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """`build(dest)` once per test session, whichever xdist worker asks first: the others wait on a file lock and
    reuse it; a failed build is recorded, so they fail at once rather than build it again. The result is shared:
    read or copy it, never change it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the parent is common to all workers
    dest, done, failed = root / f"shared-{name}" / "project", root / f"{name}.done", root / f"{name}.failed"
    with FileLock(str(root / f"{name}.lock")):
        if failed.exists():
            raise AssertionError(f"building {name} failed on another worker:\n{failed.read_text()}")
        if not done.exists():
            try:
                build(dest)
            except BaseException as exc:
                failed.write_text(f"{type(exc).__name__}: {exc}")
                raise
            done.touch()
    return dest


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
        f
        for f in out.splitlines()
        if (ROOT / f).is_file() and not any(Path(f) == p or p in Path(f).parents for p in produced)
    ]


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


def copy_repo(src: Path, dest: Path) -> Path:
    """A copy of a project tree in which the files DVC protects (read-only: its cache, and the outputs linked to it)
    are hard links to the same files, and the rest is copied. DVC never writes such a file in place: it replaces an
    output it re-runs or unprotects. A copy of the reproduced pipeline is then ~40 MB instead of 1.2 GB (the base
    model in the cache and again in the workspace), and the suite's copies fit on a small CI disk."""

    def link_or_copy(source: str, target: str) -> None:
        if os.stat(source).st_mode & stat.S_IWUSR:
            shutil.copy2(source, target)
        else:
            os.link(source, target)

    shutil.copytree(src, dest, symlinks=True, copy_function=link_or_copy)
    return dest


@pytest.fixture(scope="session")
def prepared_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small project copy (see `shrink_training`) in which `dvc repro prepare_model` has converted the embedded
    SmolLM2: once per session for all workers (`shared`), for `base_model` and as the start of `reproduced_repo`."""

    def build(dest: Path) -> None:
        dest.mkdir(parents=True)
        copy_project(dest)
        shrink_training(dest)
        run([sys.executable, "-m", "dvc", "repro", "prepare_model"], dest)

    return shared(tmp_path_factory, "prepared", build)


@pytest.fixture(scope="session")
def base_model(prepared_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded SmolLM2 converted by the real prepare_model stage (a copy, its weights linked)."""
    return copy_repo(prepared_repo / "models/base", tmp_path_factory.mktemp("model") / "base")


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
    params["curriculum"]["synthesize"] |= {"pool_size": 1, "max_iterations": 2}
    # static rounds: every pipeline run of the suite would otherwise re-measure round 2 with round 1's student;
    # test_pipeline's adaptive test turns it on in its own copy
    params["curriculum"]["plan"]["adaptive"] = False
    # score 8 instructions and keep them all, whatever their MFD: the rounds need records
    params["curriculum"]["difficulty"] |= {"min_mfd": -10.0, "max_instructions": 8}
    params["eval"]["mt_bench"]["question_ids"] = [5]
    params["eval"]["flask"]["limit"] = 1
    params["eval"]["audit"]["references"] = 1
    params["eval"] |= {"max_new_tokens": 16}
    for role in ("teacher", "student", "judge"):
        params["llm"][role] |= {"max_tokens": 64}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def reproduced_repo(prepared_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy (with two small training rounds) on which `dvc repro` has run the whole pipeline once: built
    once per session (`shared`), and this worker's own copy of it, which its tests may run DVC in."""

    def build(dest: Path) -> None:
        copy_repo(prepared_repo, dest)
        run([sys.executable, "-m", "dvc", "repro"], dest)

    snapshot = shared(tmp_path_factory, "reproduced", build)
    return copy_repo(snapshot, tmp_path_factory.mktemp("repo") / "project")


@pytest.fixture(scope="session")
def migrated_prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PREFECT_HOME whose database is migrated once; a fresh one migrates on every Prefect start (~15 s)."""
    home = tmp_path_factory.mktemp("prefect-template") / "home"
    prefect = str(Path(sys.executable).parent / "prefect")
    run(
        [prefect, "server", "database", "upgrade", "-y"], ROOT, env={"PREFECT_HOME": str(home), "PREFECT_API_URL": None}
    )
    return home


def prefect_home(template: Path, dest: Path) -> Path:
    """A new PREFECT_HOME at `dest`, started from the migrated template (no runs, blocks or deployments in it)."""
    shutil.copytree(template, dest)
    return dest


@contextmanager
def prefect_server_at(home: Path, log: Path) -> Iterator[dict[str, str]]:
    """A real `prefect server start` on loopback with its own PREFECT_HOME; yields the env that points at it."""
    import httpx

    from tunefold.ports import free_port

    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).parent / "prefect")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
        else:
            raise AssertionError("prefect server did not become healthy:\n" + log.read_text())
        yield {"PREFECT_API_URL": url, "PREFECT_HOME": str(home)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
def prefect_server(migrated_prefect_home: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """This test's own Prefect server (a fresh home: no runs, blocks or deployments of other tests)."""
    with prefect_server_at(
        prefect_home(migrated_prefect_home, tmp_path / "prefect-home"), tmp_path / "server.log"
    ) as env:
        yield env
