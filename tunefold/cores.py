"""How the pipeline's processes share the cores: idle OpenMP threads sleep instead of spinning.

torch and llama.cpp run their kernels on libgomp thread teams whose idle threads spin-wait by default. One process
alone loses little to that, but the pipeline runs several at once (the embedded llama.cpp server beside a training
or answering stage, stages side by side with `--jobs`, Dask workers, the test suite's servers): spinning threads then
hold the cores that another process needs (bench/threads.py: torch generation 10x slower beside llama.cpp on 2
cores). `OMP_WAIT_POLICY=PASSIVE` makes idle threads sleep. It must be in the environment before torch or llama.cpp
load libgomp, so the package sets it on import (every stage and the CLI inherit it); a value the user set is kept.
The embedded server is the exception: its threads spin a bounded while (`briefly_spinning`).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

WAIT_POLICY = "OMP_WAIT_POLICY"
BRIEF_SPIN = "30000"  # libgomp spin iterations before a waiting thread sleeps (tens of microseconds)


def share_cores(env: MutableMapping[str, str] = os.environ) -> str:
    """Default the OpenMP wait policy to PASSIVE; returns the policy in force."""
    return env.setdefault(WAIT_POLICY, "PASSIVE")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, as cgroups and `taskset` set it), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def briefly_spinning(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for a process whose OpenMP threads should spin a little between kernels, then sleep.

    The embedded server decodes many requests in steps of dozens of short kernels; a thread put to sleep after
    each one wakes too late for the next (a second decode thread then gains ~10%), while one spinning for a bounded
    `GOMP_SPINCOUNT` catches it (1.7x, bench/RESULTS.md) and still sleeps when the server waits. A spin count the
    user set is kept."""
    out = dict(env)
    if "GOMP_SPINCOUNT" not in out:
        out |= {WAIT_POLICY: "ACTIVE", "GOMP_SPINCOUNT": BRIEF_SPIN}
    return out
