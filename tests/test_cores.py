"""Idle OpenMP threads sleep in every process the pipeline starts (tunefold/cores.py), unless the user chose; the
embedded server's spin briefly, and it measures when other processes need its cores."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run

# imports the package the way a stage does, starts the embedded server and reads the policy its child runs with
SCRIPT = """
import os, sys
import tunefold
from tunefold.config import EmbeddedServerConfig
from tunefold.llm.server import EmbeddedServer
print(os.environ.get("OMP_WAIT_POLICY"))
if sys.argv[1] == "server":
    server = EmbeddedServer(EmbeddedServerConfig()).start()
    try:
        env = open(f"/proc/{server.proc.pid}/environ", "rb").read().split(b"\\0")
        print(sorted(e.decode() for e in env if e.startswith((b"OMP_WAIT_POLICY=", b"GOMP_SPINCOUNT="))))
    finally:
        server.stop()
"""


def _run(what: str, policy: str | None) -> list[str]:
    # None unsets the variable (conftest.run)
    return run([sys.executable, "-c", SCRIPT, what], ROOT, env={"OMP_WAIT_POLICY": policy}).stdout.strip().splitlines()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads a child's environment from /proc")
def test_the_embedded_server_spins_briefly_and_other_processes_sleep() -> None:
    assert _run("server", None) == ["PASSIVE", "['GOMP_SPINCOUNT=30000', 'OMP_WAIT_POLICY=ACTIVE']"]


def test_core_load_counts_other_processes_not_its_own(tmp_path: Path) -> None:
    """The arithmetic on a /proc/stat-format file whose CPUs gain one core-second of busy time per second."""
    from tunefold.cores import CoreLoad

    stat = tmp_path / "stat"
    cpus = sorted(CoreLoad().cpus)

    def write(busy: int) -> None:  # user nice system idle iowait irq softirq steal, in ticks
        stat.write_text("cpu 0 0 0 0 0 0 0 0\n" + "".join(f"{c} {busy} 0 0 1000 7 0 0 0\n" for c in cpus))

    write(0)
    load = CoreLoad(interval=0.2, stat=stat)
    assert load.free_cores() == len(cpus)  # nothing measured yet
    time.sleep(0.3)
    write(round(0.3 * load.tick / len(cpus)))  # 0.3 s of busy time, spread over the CPUs
    free = load.free_cores()
    assert 0.7 < load.others < 1.1 and free == pytest.approx(len(cpus) - load.others)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat")
def test_a_busy_process_beside_is_seen() -> None:
    from tunefold.cores import CoreLoad

    load = CoreLoad(interval=0.5)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, os.sched_getaffinity(0))
        time.sleep(1.0)
        load.free_cores()  # the first sample may predate the loop's start
        time.sleep(1.0)
        assert load.free_cores() <= len(load.cpus) - 0.5, load.others
    finally:
        busy.kill()
        busy.wait()


def test_a_policy_the_user_set_is_kept() -> None:
    assert _run("package", "ACTIVE") == ["ACTIVE"]
    assert _run("package", None) == ["PASSIVE"]
