"""Data-parallel self-launch: a training stage started as one process re-runs itself as N ranks on this machine.

So `dvc repro`, the Prefect flow and `tunefold stage` train on every GPU with no `accelerate launch` prefix pasted
into `dvc.yaml`. The ranks get the environment torchrun gives (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT), so
the Trainer's own distributed setup (NCCL on GPUs, gloo on the CPU) takes over. Unlike torchrun, a rank that stops
with a user error ends the launch with that rank's exit code and its one-line message, not an elastic-agent
traceback, and the other ranks are stopped rather than left waiting in a collective.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from tunefold.cores import usable_cores
from tunefold.ports import free_port

log = logging.getLogger(__name__)

RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_rank() -> bool:
    """True inside a distributed launch (ours, torchrun's or accelerate's): never launch again from there."""
    return "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_env(rank: int, n: int, port: int, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env |= {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(n),
        "LOCAL_WORLD_SIZE": str(n),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    env.setdefault("OMP_NUM_THREADS", str(threads))  # N ranks share the cores instead of each taking all
    return env


def launch_ranks(module: str, argv: Sequence[str], n: int, poll_s: float = 0.2) -> int:
    """Run `python -m module argv` as `n` ranks and wait for all. The first rank to fail stops the rest (SIGTERM,
    then SIGKILL after 30 s); SIGINT/SIGTERM to this process are passed on. Returns the launch's exit code."""
    port, threads = free_port(), max(1, usable_cores() // n)
    log.info("launching %s on %d ranks (port %d)", module, n, port)
    procs = [
        subprocess.Popen([sys.executable, "-m", module, *argv], env=rank_env(rank, n, port, threads))
        for rank in range(n)
    ]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed: int | None = None
        while failed is None and any(p.poll() is None for p in procs):
            failed = next((p.returncode for p in procs if p.returncode not in (None, 0)), None)
            time.sleep(poll_s)
        failed = failed or next((p.returncode for p in procs if p.returncode), 0)
        if failed:
            _stop(procs)
        return failed if failed >= 0 else 128 - failed  # killed by a signal: the shell's convention
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 30.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
