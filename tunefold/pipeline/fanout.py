"""Fan a stage's LLM work out over Dask workers through Prefect's Dask task runner.

Each shard runs in a worker process with its own gateway (so, with the embedded judge, its own llama.cpp server:
real parallelism where one server would serialise requests). `eval.fanout.address` points at an existing Dask
scheduler (`dask scheduler` + `dask worker` on other machines) instead of a local cluster; the shards then run
there, sharing the response cache when `llm.cache_dir` is on shared storage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tunefold.config import FanoutSettings

T = TypeVar("T")


def fan_out(fn: Callable[..., Any], shards: Sequence[T], cfg: FanoutSettings, /, **fixed: Any) -> list[Any]:
    """`[fn(shard, **fixed) for shard in shards]`, each call a Prefect task on a Dask worker, results in order."""
    from prefect import flow, task, unmapped
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        runner = DaskTaskRunner(address=cfg.address)
    else:
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1,
                                                "processes": True, "dashboard_address": None})  # fmt: skip
    shard_task = task(fn, name=f"shard:{fn.__name__}", cache_policy=NO_CACHE)

    @flow(name="tunefold-fanout", task_runner=runner)
    def fanout() -> list[Any]:
        futures = shard_task.map(list(shards), **{k: unmapped(v) for k, v in fixed.items()})
        return [f.result() for f in futures]

    return fanout()
