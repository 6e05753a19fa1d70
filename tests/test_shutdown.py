"""Stopped the way systemd, Docker and Kubernetes stop a service (SIGTERM), a run holding the embedded llama.cpp
server takes the server with it. `tunefold serve` and a Prefect worker stopped by SIGTERM: tests/test_cycle.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT
from tests.test_gateway import SERVER_SCRIPT, _alive


def test_embedded_server_ends_with_a_run_stopped_by_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, "sigterm", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    assert _alive(pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), f"llama.cpp server {pid} outlived its parent (SIGTERM)"
