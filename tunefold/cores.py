"""How the pipeline's processes share the cores: idle OpenMP threads sleep instead of spinning.

torch and llama.cpp run their kernels on libgomp thread teams whose idle threads spin-wait by default. One process
alone loses little to that, but the pipeline runs several at once (the embedded llama.cpp server beside a training
or answering stage, stages side by side with `--jobs`, Dask workers, the test suite's servers): spinning threads then
hold the cores that another process needs (bench/threads.py: torch generation 10x slower beside llama.cpp on 2
cores). `OMP_WAIT_POLICY=PASSIVE` makes idle threads sleep. It must be in the environment before torch or llama.cpp
load libgomp, so the package sets it on import (every stage and the CLI inherit it); a value the user set is kept.

The embedded server is the exception: its decode steps are hundreds of tiny kernels, and a thread that sleeps
after each wakes too late for the next, so its threads spin briefly (`briefly_spinning`: 1.5-1.7x alone,
bench/RESULTS.md). Spinning is what costs 2-5x once another process needs the cores, so its engine measures that
(`CoreLoad`) and decodes on one thread, where no thread waits for a partner, while other processes are busy.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from pathlib import Path

WAIT_POLICY = "OMP_WAIT_POLICY"
BRIEF_SPIN = "30000"  # GOMP_SPINCOUNT: a waiting thread spins ~0.3 ms, then sleeps (an idle server uses no CPU)


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
    """The environment of the embedded server: OpenMP threads spin for `BRIEF_SPIN` iterations between kernels,
    then sleep. A spin count the user set is kept, with their policy."""
    out = dict(env)
    if "GOMP_SPINCOUNT" not in out:
        out |= {WAIT_POLICY: "ACTIVE", "GOMP_SPINCOUNT": BRIEF_SPIN}
    return out


class CoreLoad:
    """How many of this process's cores other processes kept busy lately: the busy time of the CPUs in its
    affinity mask (/proc/stat, steal included) minus its own CPU time, per second of wall time, sampled at most
    every `interval` seconds. Without /proc/stat it sees no other load; without an affinity mask (not Linux) every
    core counts as free."""

    def __init__(self, interval: float = 0.25, stat: Path = Path("/proc/stat")) -> None:
        self.interval = interval
        self.stat = stat
        self.cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else set()
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.others = 0.0
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        """(wall time, busy CPU seconds of our CPUs, this process's CPU seconds), or None when unreadable."""
        try:
            lines = self.stat.read_text().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            name, *fields = line.split()
            if name in self.cpus:
                ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                busy += sum(ticks) - ticks[3] - ticks[4]
        return time.monotonic(), busy / self.tick, time.process_time()

    def free_cores(self) -> float:
        """Our CPUs minus what other processes used in the last interval (refreshed when it is over)."""
        last = self._last
        if last is not None and time.monotonic() - last[0] >= self.interval:
            now = self._sample()
            if now is not None:
                used = (now[1] - last[1]) - (now[2] - last[2])
                self.others = max(0.0, used / (now[0] - last[0]))
                self._last = now
        if not self.cpus:  # nothing to measure: every core
            return float(os.cpu_count() or 1)
        return max(0.0, len(self.cpus) - self.others)
