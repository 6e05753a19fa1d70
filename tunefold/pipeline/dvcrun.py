"""Running DVC and stage commands with this interpreter's environment (so `python -m tasks.X` finds our deps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def dvc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def stale_stages(root: Path) -> set[str] | None:
    """The stages `dvc status` reports changed (deps, outs or command), or None when it cannot say."""
    proc = subprocess.run(
        dvc_cmd("--wait-for-lock", "status", "--json"), cwd=root, env=tool_env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        return None
    try:
        found = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        return None
    return set(found) if isinstance(found, dict) else None
