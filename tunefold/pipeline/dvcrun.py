"""Running DVC and stage commands with this interpreter's environment (so `python -m tasks.X` finds our deps)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def dvc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]
