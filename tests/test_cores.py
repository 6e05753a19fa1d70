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
        print([e.decode() for e in env if e.startswith(b"OMP_WAIT_POLICY=")])
    finally:
        server.stop()
"""


def _run(what: str, policy: str | None) -> list[str]:
    # None unsets the variable (conftest.run)
    return run([sys.executable, "-c", SCRIPT, what], ROOT, env={"OMP_WAIT_POLICY": policy}).stdout.strip().splitlines()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads a child's environment from /proc")
def test_the_embedded_server_inherits_sleeping_threads() -> None:
    assert _run("server", None) == ["PASSIVE", "['OMP_WAIT_POLICY=PASSIVE']"]


def test_a_policy_the_user_set_is_kept() -> None:
    assert _run("package", "ACTIVE") == ["ACTIVE"]
    assert _run("package", None) == ["PASSIVE"]
