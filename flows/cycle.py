"""A retrain-and-evaluate cycle: new data in, the pipeline re-run where stale, the gate decides, the registry records.

One cycle at a time (a workspace lock, plus the deployment's concurrency limit of 1): a second trigger is skipped
with a log line. DVC decides what is stale; Prefect owns the schedule, retries and notifications. A failed cycle
changes neither the registry nor the champion, and the next run resumes from the failed stage (DVC skips what
finished; training resumes from its checkpoints).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import pipeline
from tunefold.config import Params, load_params
from tunefold.cycle.promotion import Decision, Scores, decide, heldout_scores
from tunefold.cycle.registry import Registry, git, lineage, lock_outs, source_hashes
from tunefold.io import atomic_dir, read_json
from tunefold.pipeline.dvcrun import dvc_cmd, tool_env
from tunefold.pipeline.lock import WorkspaceLock
from tunefold.pipeline.summary import md_table
from tunefold.pipeline.versioning import run_version, stamp_flow_run

LOCK = ".tunefold/cycle.lock"


def _notify(params: Params, subject: str, body: str) -> None:
    """Tell the configured Prefect notification block (webhook, Slack, email, ...) when one is set."""
    if not params.cycle.notify_block:
        return
    from prefect.blocks.core import Block

    try:
        Block.load(params.cycle.notify_block).notify(body=body, subject=subject)  # type: ignore[attr-defined]
    except Exception as e:  # a broken notifier must not fail the cycle it reports on
        get_run_logger().warning("notification through %s failed: %s", params.cycle.notify_block, e)


def challenger_scores(root: Path, params: Params) -> Scores:
    """The evaluation summary and the held-out numbers of the last SFT round and of DPO."""
    metrics = root / "metrics"
    last_round = list(params.train.rounds)[-1] if params.train else None
    sft = metrics / "sft" / f"{last_round}.json"
    heldout = heldout_scores(
        read_json(sft) if last_round and sft.exists() else None,
        read_json(metrics / "dpo.json") if (metrics / "dpo.json").exists() else None,
    )
    return Scores.from_summary(read_json(root / "reports/eval/summary.json"), heldout)


@task(name="gate", cache_policy=NO_CACHE)
def gate(root: str, params: Params, champion: dict[str, Any] | None) -> Decision:
    champ = Scores(**champion["scores"]) if champion else None
    challenger = challenger_scores(Path(root), params)
    return decide(challenger, champ, params.cycle.gate, champion and champion["model_id"])


@task(name="record", cache_policy=NO_CACHE)
def record(root: str, params: Params, decision: Decision, cycle_id: str, sources: dict[str, str]) -> dict[str, Any]:
    """Registry entry, champion adapter (on promotion), `dvc add`, a git commit and a tag."""
    rootp = Path(root)
    registry = Registry(rootp, params)
    version = registry.next_version() if decision.promote else None
    tag = f"{params.cycle.tag_prefix}{version}" if version else f"challenger-{cycle_id}"
    entry = {
        "cycle": cycle_id,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tag": tag,
        "version": version,
        "promoted": decision.promote,
        "reason": decision.reason,
        "decision": decision.as_dict(),
        "model_id": f"{params.cycle.tag_prefix}{version}" if version else None,
        "scores": challenger_scores(rootp, params).__dict__,
        "sources": sources,
        "lineage": lineage(rootp, params),
    }
    track = [params.cycle.registry]
    if decision.promote:
        with atomic_dir(rootp / params.cycle.champion_dir) as tmp:
            shutil.copytree(rootp / params.cycle.candidate_adapter, tmp / "adapter")
            (tmp / "model.json").write_text(json.dumps({"model_id": entry["model_id"], "tag": tag}) + "\n")
        track.append(params.cycle.champion_dir)
    registry.append(entry)
    subprocess.run(dvc_cmd("add", *track), cwd=rootp, env=tool_env(), check=True, capture_output=True)
    if params.cycle.commit:
        sources = [s.path for s in params.ingest.sources]
        tracked = [p for p in (*sources, *(f"{p}.dvc" for p in sources)) if (rootp / p).exists()]
        paths = ["dvc.lock", "params.yaml", "metrics", ":(glob)**/.gitignore", *tracked, *(f"{t}.dvc" for t in track)]
        author = ("-c", "user.name=tunefold", "-c", "user.email=tunefold@localhost")
        git(rootp, "add", "-A", "--", *paths)
        git(rootp, *author, "commit", "-q", "--allow-empty", "-m", f"cycle {cycle_id}: {tag} {decision.reason}")
        git(rootp, "tag", "-f", tag)
    return entry


@flow(name="tunefold-cycle", log_prints=True)
def cycle(root: str = ".") -> dict[str, Any]:
    """Run the pipeline on the current data, then promote the result or not. Returns the registry entry."""
    logger = get_run_logger()
    rootp = Path(root).resolve()
    stamp_flow_run(rootp)
    with WorkspaceLock(rootp / LOCK) as lock:
        if not lock.acquired:
            logger.warning("another cycle is running in %s (%s); skipping this one", rootp, lock.holder())
            return {"skipped": "another cycle holds the workspace lock"}
        params = load_params(rootp / "params.yaml")
        registry = Registry(rootp, params)
        champion = registry.champion()
        sources = source_hashes(rootp, params)
        last = registry.entries()[-1]["sources"] if registry.entries() else {}
        changed = [p for p, h in sources.items() if last.get(p) != h]
        shown = [f"{p}={h}" + (" (new)" if p in changed else "") for p, h in sources.items()]
        logger.info("sources: %s", ", ".join(shown))
        cycle_id = time.strftime("%Y%m%d-%H%M%S")
        try:
            pipeline(root=str(rootp))
        except Exception as e:
            _notify(
                params,
                "tunefold cycle failed",
                f"cycle {cycle_id} in {rootp} failed: {e}. The champion "
                f"({champion['tag'] if champion else 'none'}) is unchanged; re-run to resume.",
            )
            raise
        adapter_hash = lock_outs(rootp).get(params.cycle.candidate_adapter)
        if champion and champion["lineage"]["adapter"]["hash"] == adapter_hash:
            logger.info("the candidate is the champion %s (nothing changed); no decision to make", champion["tag"])
            return {"skipped": f"candidate unchanged since {champion['tag']}"}
        decision = gate(str(rootp), params, champion)
        entry = record(str(rootp), params, decision, cycle_id, sources)
        rows = [[c.name, c.passed, c.challenger, c.champion, c.limit, c.note] for c in decision.checks]
        verdict = "promoted" if decision.promote else "rejected"
        markdown = f"## Cycle {cycle_id}: {verdict} ({entry['tag']})\n\n{decision.reason}\n\n" + md_table(
            ["check", "passed", "challenger", "champion", "limit", "note"], rows
        )
        create_markdown_artifact(key="cycle-decision", markdown=markdown, description="promotion gate")
        logger.info("%s: %s", entry["tag"], decision.reason)
        if decision.promote:
            _notify(params, f"tunefold promoted {entry['tag']}", f"{entry['tag']}: {decision.reason}")
        return entry


def serve(root: Path, params: Params) -> None:
    """A long-lived process that runs the cycle on the params' schedule (no work pool needed). The deployment is
    versioned like a run (git commit, hashes of params.yaml and dvc.lock); each run stamps its own when it starts."""
    if params.cycle.interval_seconds:
        schedule: dict[str, Any] = {"interval": params.cycle.interval_seconds}
    else:
        schedule = {"cron": params.cycle.cron}
    version = run_version(root)
    cycle.serve(
        name=params.cycle.deployment,
        parameters={"root": str(root)},
        global_limit=1,
        version=version.version,
        tags=list(version.tags),
        **schedule,
    )


def deploy(root: Path, params: Params, pool: str) -> None:
    """A deployment on a work pool (`prefect worker start --pool POOL` runs it), from this checkout's code."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    if params.cycle.interval_seconds:
        sched: IntervalSchedule | CronSchedule = IntervalSchedule(interval=params.cycle.interval_seconds)
    else:
        sched = CronSchedule(cron=params.cycle.cron or "0 3 * * 1", timezone=params.cycle.timezone)
    version = run_version(root)
    cycle.from_source(source=str(root), entrypoint="flows/cycle.py:cycle").deploy(
        name=params.cycle.deployment,
        work_pool_name=pool,
        parameters={"root": str(root)},
        schedule=sched,
        concurrency_limit=1,
        version=version.version,
        tags=list(version.tags),
        print_next_steps=False,
    )


if __name__ == "__main__":
    cycle()
