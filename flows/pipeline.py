"""The pipeline as a Prefect flow: the stages of dvc.yaml, each run through `dvc repro --single-item`, as a graph.

Each stage is submitted with its dvc.yaml upstream stages as `wait_for`, so the Prefect UI draws the DAG, and
stages that do not depend on each other run side by side (at most `max_parallel`, and one GPU stage at a time).
DVC decides whether a stage is stale and records what it produced (dvc.lock, cache): one `dvc status` before the
run settles every stage with nothing stale at or above it, the others are asked as they come. DVC releases its repo
lock while a stage's command runs and takes it to check and record, so `--wait-for-lock` is what lets two stages
finish close together. Prefect adds the run history, logs, retries and a Markdown artifact per stage; nothing is cached
twice (NO_CACHE). Every run carries the project's git commit as its version and hashes of params.yaml and
dvc.lock as tags. After a flow run, `dvc status` has nothing to do.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

from tunefold.config import OrchestrationConfig, load_params
from tunefold.errors import InputError
from tunefold.pipeline.dag import Schedule, Stage, StageGraph
from tunefold.pipeline.dvcrun import dvc_cmd, stale_stages, tool_env
from tunefold.pipeline.summary import stage_metrics, stage_summary
from tunefold.pipeline.versioning import stamp_flow_run

# Stages that train or generate with the model: one at a time, as they would share one GPU (or all the CPUs).
GPU_STAGES = ("curriculum_round", "sft", "dpo", "generate")


def uses_gpu(stage: str) -> bool:
    return stage.split("@")[0] in GPU_STAGES


def default_parallel() -> int:
    """Stages run side by side by default: one per CPU, at most 4 (each stage is multi-threaded itself)."""
    return max(1, min(4, os.cpu_count() or 1))


@task(name="stage", task_run_name="{stage.name}", cache_policy=NO_CACHE)
def run_stage(stage: Stage, root: str, force: bool = False, settled: bool = False) -> dict[str, Any]:
    """Run one stage through `dvc repro --single-item` (a no-op when DVC finds it up to date). A `settled` stage
    (the run's `dvc status` found it and everything upstream of it up to date) is not asked about again: a DVC
    start per stage was most of a re-run with nothing to do."""
    logger = get_run_logger()
    if settled:
        logger.info("Stage '%s' didn't change, skipping (dvc status before the run)", stage.name)
    else:
        cmd = dvc_cmd("--wait-for-lock", "repro", "--single-item", stage.name, *(["--force"] if force else []))
        logger.info("$ dvc %s", " ".join(cmd[3:]))
        proc = subprocess.Popen(
            cmd, cwd=root, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                tail = [*tail[-19:], line]
        if proc.wait() != 0:
            raise RuntimeError(f"stage {stage.name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    create_markdown_artifact(
        key="stage-" + re.sub(r"[^a-z0-9-]+", "-", stage.name.lower()),
        markdown=stage_summary(stage, Path(root)),
        description=f"outputs of stage {stage.name}",
    )
    return stage_metrics(stage, Path(root))


def orchestration(root: Path, graph: StageGraph) -> OrchestrationConfig:
    """Retry settings from params.yaml. In the tunefold project (it has an `ingest` stage) the whole file is
    validated and its sources checked; any other DVC project only needs an optional `orchestration` section."""
    path = root / "params.yaml"
    if "ingest" in graph.stages:
        params = load_params(path)
        for src in graph.untracked_sources("ingest", [s.path for s in params.ingest.sources]):
            get_run_logger().warning(
                "source %s is not a dep of stage ingest in dvc.yaml: DVC will not see it change", src
            )
        return params.orchestration
    import yaml
    from pydantic import ValidationError

    raw = (yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None) or {}
    try:
        return OrchestrationConfig.model_validate(raw.get("orchestration") or {})
    except ValidationError as e:
        raise InputError(f"{path}: orchestration: {e}") from None


@flow(name="tunefold-pipeline", log_prints=True)
def pipeline(
    root: str = ".", stages: list[str] | None = None, force: bool = False, max_parallel: int | None = None
) -> dict[str, dict[str, Any]]:
    """Run `stages` (default: all) and everything upstream of them, each once its upstream stages are done.

    A failed stage fails the run: what is downstream of it never runs (its task runs end NotReady), stages
    independent of it still finish, so a re-run resumes where it stopped.
    """
    logger = get_run_logger()
    rootp = Path(root).resolve()
    version = stamp_flow_run(rootp)
    logger.info("version %s, %s", version.version, ", ".join(version.tags))
    graph = StageGraph.load(rootp / "dvc.yaml")
    settings = orchestration(rootp, graph)
    order = graph.order(stages)
    parallel = default_parallel() if max_parallel is None else max_parallel
    if parallel < 1:
        raise InputError(f"max_parallel must be at least 1, not {parallel}")
    logger.info("stages: %s (up to %d at a time, one GPU stage at a time)", " -> ".join(order), parallel)
    forced = set(stages or order) if force else set()
    stale = stale_stages(rootp)
    settled = graph.settled(order, None if stale is None else stale | forced)
    logger.info(
        "dvc status: %d of %d stages up to date with everything upstream; DVC decides the others as they come",
        len(settled),
        len(order),
    )
    schedule = Schedule(order, graph.upstream, parallel, {s: "gpu" for s in order if uses_gpu(s)})
    futures: dict[str, PrefectFuture[dict[str, Any]]] = {}

    def submit(name: str) -> None:
        configured = run_stage.with_options(
            retries=settings.retries.get(name, 0),
            retry_delay_seconds=settings.retry_delay_seconds,
            tags={"gpu"} if uses_gpu(name) else set(),
        )
        futures[name] = configured.submit(
            graph.stages[name],
            str(rootp),
            force=name in forced,
            settled=name in settled,
            wait_for=[futures[u] for u in sorted(graph.upstream[name])],
        )

    while True:
        for name in schedule.startable():
            submit(name)
            schedule.start(name)
        if not schedule.running:
            break
        finished = next(as_completed([futures[n] for n in schedule.running]))
        finished.wait()
        name = next(n for n in schedule.running if futures[n] is finished)
        schedule.finish(name, finished.state.is_completed())
    blocked = schedule.blocked()
    for name in blocked:  # recorded as NotReady with their upstream, never run
        submit(name)
        futures[name].wait()
    if schedule.failed:
        errors = [str(futures[n].result(raise_on_failure=False)) for n in order if n in schedule.failed]
        not_run = f"\nnot run (upstream failed): {', '.join(blocked)}" if blocked else ""
        raise RuntimeError("\n".join(errors) + not_run)
    return {name: futures[name].result() for name in order}


if __name__ == "__main__":
    pipeline()
