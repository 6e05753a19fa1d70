"""Which version of the DAG and data a run used, stamped on Prefect flow runs and deployments.

The version is the project's git commit (`-dirty` when its files differ from that commit); the tags are content
hashes of params.yaml and dvc.lock as they were when the run started, so two runs with the same tags saw the
same configuration and the same recorded data (`sha256sum params.yaml dvc.lock` gives the same prefixes).
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

HASHED = ("params.yaml", "dvc.lock")
NO_GIT = "no-git"


@dataclass(frozen=True)
class RunVersion:
    version: str
    tags: tuple[str, ...]


def _git(root: Path, *args: str) -> str | None:
    """git's output, or None where root is not in a git repository with a commit (or git is missing)."""
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_version(root: Path) -> str:
    """Short commit of HEAD, plus `-dirty` when a file under root (tracked, or untracked and not ignored) differs."""
    commit = _git(root, "rev-parse", "--short", "HEAD")
    if not commit:
        return NO_GIT
    return commit + ("-dirty" if _git(root, "status", "--porcelain", "--", ".") else "")


def file_tag(path: Path) -> str:
    """`<name>:<first 12 hex digits of its sha256>`, or `<name>:none` when the file does not exist."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "none"
    return f"{path.name.removesuffix('.yaml')}:{digest}"


def run_version(root: Path) -> RunVersion:
    return RunVersion(git_version(root), tuple(file_tag(root / name) for name in HASHED))


def is_version_tag(tag: str) -> bool:
    return any(tag.startswith(name.removesuffix(".yaml") + ":") for name in HASHED)


def stamp_flow_run(root: Path) -> RunVersion:
    """Set the running flow run's version and tags from root.

    Called in the flow's body: the engine sets `flow_version` from the flow object when the run starts (for a
    deployment's run too), so a caller's `with_options(version=...)` cannot reach every run. Tags from a
    deployment or a `tags()` context are kept; version tags set at deploy time are replaced by the current ones.
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    version = run_version(root)
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return version
    kept = [t for t in ctx.flow_run.tags if not is_version_tag(t)]
    with get_client(sync_client=True) as client:
        client.update_flow_run(ctx.flow_run.id, flow_version=version.version, tags=[*kept, *version.tags])
    return version
