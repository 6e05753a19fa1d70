"""The stage graph as dvc.yaml declares it: the single source of truth for both runners.

Stage B depends on stage A when one of B's deps is one of A's outs (or inside or above it), exactly the rule
DVC applies. The Prefect flow walks `StageGraph.order()`; tests compare the edges with `dvc dag`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

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


def _paths(entries: list[Any] | None) -> tuple[str, ...]:
    """dvc.yaml path lists hold plain strings or one-key mappings `{path: {options}}`."""
    out = []
    for e in entries or []:
        out.extend([e] if isinstance(e, str) else list(e))
    return tuple(str(PurePosixPath(p)) for p in out)


def _params(entries: list[Any] | None) -> tuple[str, ...]:
    out: list[str] = []
    for e in entries or []:
        if isinstance(e, str):
            out.append(e)
        else:  # {params_file: [keys]}
            for keys in e.values():
                out.extend(keys or [])
    return tuple(out)


def _overlaps(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pb in pa.parents or pa in pb.parents


@dataclass
class StageGraph:
    stages: dict[str, Stage]
    upstream: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, dvc_yaml: str | Path = "dvc.yaml") -> StageGraph:
        path = Path(dvc_yaml)
        if not path.exists():
            raise TunefoldError(f"{path}: not found; run from the project root (where dvc.yaml is)")
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        stages = {}
        for name, spec in (doc.get("stages") or {}).items():
            if "foreach" in spec:
                raise TunefoldError(f"{path}: stage {name}: foreach stages are expanded by DVC; not supported here")
            stages[name] = Stage(
                name=name,
                cmd=" ".join(spec["cmd"]) if isinstance(spec["cmd"], list) else spec["cmd"],
                deps=_paths(spec.get("deps")),
                outs=_paths(spec.get("outs")),
                metrics=_paths(spec.get("metrics")),
                plots=_paths(spec.get("plots")),
                params=_params(spec.get("params")),
            )
        graph = cls(stages)
        for name, stage in stages.items():
            graph.upstream[name] = {
                other.name
                for other in stages.values()
                if other.name != name and any(_overlaps(d, o) for d in stage.deps for o in other.outs)
            }
        return graph

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

    def untracked_sources(self, stage: str, paths: list[str]) -> list[str]:
        """Paths a stage reads (e.g. ingest sources) that are not among its DVC deps: changes would go unnoticed."""
        deps = self.stages[stage].deps
        return [p for p in paths if not any(_overlaps(p, d) for d in deps)]
