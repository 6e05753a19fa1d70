"""The pipeline as a Prefect flow: the stages of dvc.yaml, in its order, each run through `dvc repro`.

DVC decides whether a stage is stale and records what it produced (dvc.lock, cache); Prefect adds the run
history, logs, retries and a Markdown artifact per stage. Nothing is cached twice: the tasks use NO_CACHE.
After a flow run, `dvc status` has nothing to do.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tunefold.config import load_params
from tunefold.pipeline.dag import StageGraph
from tunefold.pipeline.dvcrun import dvc_cmd, tool_env
from tunefold.pipeline.summary import stage_metrics, stage_summary


@task(name="stage", task_run_name="{name}", cache_policy=NO_CACHE)
def run_stage(name: str, root: str, force: bool = False) -> dict[str, Any]:
    """Run one stage through `dvc repro --single-item` (a no-op when DVC finds it up to date)."""
    logger = get_run_logger()
    cmd = dvc_cmd("repro", "--single-item", name, *(["--force"] if force else []))
    logger.info("$ dvc %s", " ".join(cmd[3:]))
    proc = subprocess.Popen(cmd, cwd=root, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            logger.info(line)
            tail = [*tail[-19:], line]
    if proc.wait() != 0:
        raise RuntimeError(f"stage {name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    stage = StageGraph.load(Path(root) / "dvc.yaml").stages[name]
    create_markdown_artifact(
        key="stage-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()),
        markdown=stage_summary(stage, Path(root)),
        description=f"outputs of stage {name}",
    )
    return stage_metrics(stage, Path(root))


@flow(name="tunefold-pipeline", log_prints=True)
def pipeline(root: str = ".", stages: list[str] | None = None, force: bool = False) -> dict[str, dict[str, Any]]:
    """Run `stages` (default: all) and everything upstream of them, in dvc.yaml's order."""
    logger = get_run_logger()
    rootp = Path(root).resolve()
    params = load_params(rootp / "params.yaml")
    graph = StageGraph.load(rootp / "dvc.yaml")
    for path in graph.untracked_sources("ingest", [s.path for s in params.ingest.sources]):
        logger.warning("source %s is not a dep of stage ingest in dvc.yaml: DVC will not see it change", path)
    order = graph.order(stages)
    logger.info("stages: %s", " -> ".join(order))
    results: dict[str, dict[str, Any]] = {}
    for name in order:
        configured = run_stage.with_options(
            retries=params.orchestration.retries.get(name, 0),
            retry_delay_seconds=params.orchestration.retry_delay_seconds,
        )
        results[name] = configured(name, str(rootp), force=force and (not stages or name in stages))
    return results


if __name__ == "__main__":
    pipeline()
