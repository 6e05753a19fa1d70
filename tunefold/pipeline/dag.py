"""The stage graph as dvc.yaml declares it and DVC resolves it: the single source of truth for both runners.

The Prefect flow runs `StageGraph.order()` through a `Schedule` (independent stages side by side); a test compares
the graph's edges with `dvc dag`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tunefold.errors import TunefoldError


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...]
    plots: tuple[str, ...]
    params: tuple[str, ...]


def _address(stage: Any) -> str:
    """How `dvc repro` run in the project root names a DVC stage (DVC's own `addressing` is relative to the
    process's working directory, which need not be the project)."""
    return stage.name if stage.path_in_repo == "dvc.yaml" else f"{stage.path_in_repo}:{stage.name}"


def _overlaps(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pb in pa.parents or pa in pb.parents


@dataclass
class StageGraph:
    stages: dict[str, Stage]
    upstream: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, dvc_yaml: str | Path = "dvc.yaml") -> StageGraph:
        """Read the graph through DVC itself, so `foreach` rounds and `${...}` templating expand exactly as
        `dvc repro` expands them."""
        path = Path(dvc_yaml)
        if not path.exists():
            raise TunefoldError(f"{path}: not found; run from the project root (where dvc.yaml is)")
        from dvc.exceptions import DvcException
        from dvc.repo import Repo

        try:
            with Repo(str(path.resolve().parent)) as repo:
                index = repo.index
                stages: dict[str, Stage] = {}
                for st in index.stages:
                    if not st.cmd:
                        continue  # a `.dvc` file, not a pipeline stage
                    outs = [o for o in st.outs if not (o.metric or o.plot)]
                    stages[_address(st)] = Stage(
                        name=_address(st),
                        cmd=" ".join(st.cmd) if isinstance(st.cmd, list) else st.cmd,
                        deps=tuple(d.def_path for d in st.deps if not d.def_path.endswith("params.yaml")),
                        outs=tuple(o.def_path for o in outs),
                        metrics=tuple(o.def_path for o in st.outs if o.metric),
                        plots=tuple(o.def_path for o in st.outs if o.plot),
                        params=tuple(k for d in st.deps if hasattr(d, "params") for k in (d.params or [])),
                    )
                upstream = {name: set() for name in stages}
                for down, up in index.graph.edges:
                    if _address(down) in stages and _address(up) in stages:
                        upstream[_address(down)].add(_address(up))
        except DvcException as e:
            raise TunefoldError(f"{path}: {e}") from e
        return cls(stages, upstream)

    def edges(self) -> set[tuple[str, str]]:
        """(upstream, downstream) pairs."""
        return {(u, name) for name, ups in self.upstream.items() for u in ups}

    def order(self, targets: list[str] | None = None) -> list[str]:
        """Topological order (ties broken by dvc.yaml order) of `targets` and everything upstream of them."""
        unknown = sorted(set(targets or []) - set(self.stages))
        if unknown:
            raise TunefoldError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(self.stages)}")
        wanted = set(self.stages) if not targets else self._closure(targets)
        done: list[str] = []
        while len(done) < len(wanted):
            ready = [s for s in self.stages if s in wanted and s not in done and self.upstream[s] <= set(done)]
            if not ready:
                raise TunefoldError(f"dvc.yaml: cycle among stages {sorted(wanted - set(done))}")
            done.append(ready[0])
        return done

    def _closure(self, targets: list[str]) -> set[str]:
        seen, todo = set(), list(targets)
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(self.upstream[s])
        return seen

    def settled(self, order: list[str], stale: set[str] | None) -> set[str]:
        """The stages of `order` (topological) that are not in `stale` and have nothing in it upstream: no run can
        change their inputs. None when `stale` is unknown or names a stage this graph does not know."""
        if stale is None or not stale <= set(self.stages):
            return set()
        done: set[str] = set()
        for name in order:
            if name not in stale and self.upstream[name] <= done:
                done.add(name)
        return done

    def untracked_sources(self, stage: str, paths: list[str]) -> list[str]:
        """Paths a stage reads (e.g. ingest sources) that are not among its DVC deps: changes would go unnoticed."""
        return untracked(paths, self.stages[stage].deps)


@dataclass
class Schedule:
    """Which stages may start now: every upstream stage done, fewer than `max_parallel` running, and none of the
    same exclusive resource (e.g. the one GPU) running. What is downstream of a failure never starts."""

    order: list[str]
    upstream: dict[str, set[str]]
    max_parallel: int
    resource: dict[str, str] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)

    def startable(self) -> list[str]:
        """Stages to start now, in `order`; call `start` for each."""
        busy = {self.resource[s] for s in self.running if s in self.resource}
        free = self.max_parallel - len(self.running)
        out: list[str] = []
        for name in self.order:
            if len(out) >= free:
                break
            res = self.resource.get(name)
            seen = name in self.running or name in self.done or name in self.failed
            if not seen and self.upstream[name] <= self.done and (res is None or res not in busy):
                out.append(name)
                busy |= {res} if res else set()
        return out

    def start(self, name: str) -> None:
        self.running.add(name)

    def finish(self, name: str, ok: bool) -> None:
        self.running.discard(name)
        (self.done if ok else self.failed).add(name)

    def blocked(self) -> list[str]:
        """Stages that will never start because something upstream of them failed, in `order`."""
        out: list[str] = []
        for name in self.order:
            if self.upstream[name] & (self.failed | set(out)):
                out.append(name)
        return out


def untracked(paths: list[str], deps: Iterable[str]) -> list[str]:
    deps = list(deps)
    return [p for p in paths if not any(_overlaps(p, d) for d in deps)]


def declared_deps(dvc_yaml: Path, stage: str) -> list[str] | None:
    """A plain stage's deps as dvc.yaml writes them, read without DVC (cheap, and safe inside `dvc repro`);
    None when the file or stage is not there."""
    import yaml

    if not dvc_yaml.exists():
        return None
    spec = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {}).get(stage)
    if not isinstance(spec, dict):
        return None
    return [d for d in spec.get("deps", []) if isinstance(d, str)]
