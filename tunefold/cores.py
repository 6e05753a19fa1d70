"""How the pipeline's processes share the cores: idle OpenMP threads sleep instead of spinning.

torch and llama.cpp run their kernels on libgomp thread teams whose idle threads spin-wait by default. One process
alone loses little to that, but the pipeline runs several at once (the embedded llama.cpp server beside a training
or answering stage, stages side by side with `--jobs`, Dask workers, the test suite's servers): spinning threads then
hold the cores that another process needs (bench/threads.py: torch generation 10x slower beside llama.cpp on 2
cores). `OMP_WAIT_POLICY=PASSIVE` makes idle threads sleep. It must be in the environment before torch or llama.cpp
load libgomp, so the package sets it on import (every stage, the CLI and the embedded server inherit it); a value
the user set is kept. (Spinning with a bounded GOMP_SPINCOUNT made the embedded server's batched decoding 1.7x
faster alone, but its idle threads still spun at 100% of both cores beside the next stage: bench/RESULTS.md.)
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

WAIT_POLICY = "OMP_WAIT_POLICY"


def share_cores(env: MutableMapping[str, str] = os.environ) -> str:
    """Default the OpenMP wait policy to PASSIVE; returns the policy in force."""
    return env.setdefault(WAIT_POLICY, "PASSIVE")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, as cgroups and `taskset` set it), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
