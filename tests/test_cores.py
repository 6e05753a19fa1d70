"""Idle OpenMP threads sleep in every process the pipeline starts (tunefold/cores.py), unless the user chose."""

from __future__ import annotations

import sys
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
def test_the_embedded_server_spins_briefly_and_the_stage_sleeps() -> None:
    """The stage keeps sleeping threads; the server's spin a bounded while between its decode kernels."""
    assert _run("server", None) == ["PASSIVE", "['GOMP_SPINCOUNT=30000', 'OMP_WAIT_POLICY=ACTIVE']"]


def test_a_policy_the_user_set_is_kept() -> None:
    assert _run("package", "ACTIVE") == ["ACTIVE"]
    assert _run("package", None) == ["PASSIVE"]


def test_a_spin_count_the_user_set_is_kept() -> None:
    from tunefold.cores import briefly_spinning

    assert briefly_spinning({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}) == {
        "OMP_WAIT_POLICY": "PASSIVE",
        "GOMP_SPINCOUNT": "0",
    }
