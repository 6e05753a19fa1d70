"""The model registry and lineage: every cycle's decision, with the numbers behind it and where the model came from.

`<registry>/models.jsonl` holds one entry per decided cycle (promoted or rejected), is tracked with `dvc add`, and
each decision is a git commit with a tag (`model-vN` when promoted, `challenger-<cycle>` when not), from which
`git checkout TAG && dvc checkout` restores that model's data, adapter and reports exactly.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tunefold.config import Params
from tunefold.errors import InputError
from tunefold.io import read_json, write_jsonl
from tunefold.train.training import file_hash

ENTRIES = "models.jsonl"
# What prepare_model recorded of the exact base weights (tunefold.train.models.base_source) and how it saved them.
BASE_SOURCE_KEYS = ("source", "revision", "commit", "package", "source_sha256", "dtype")


class Registry:
    def __init__(self, root: Path, params: Params) -> None:
        self.root = root
        self.cfg = params.cycle
        self.path = root / self.cfg.registry / ENTRIES

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def champion(self) -> dict[str, Any] | None:
        promoted = [e for e in self.entries() if e["promoted"]]
        return promoted[-1] if promoted else None

    def next_version(self) -> int:
        return sum(e["promoted"] for e in self.entries()) + 1

    def append(self, entry: dict[str, Any]) -> None:
        write_jsonl(self.path, [*self.entries(), entry])  # atomic: the old file stays until the new one is whole

    def find(self, name: str) -> dict[str, Any]:
        """An entry by tag (`model-v2`, `challenger-...`), version number (`2`, `v2`) or cycle id."""
        for e in reversed(self.entries()):
            if name in (e["tag"], e["cycle"], str(e.get("version")), f"v{e.get('version')}"):
                return e
        known = ", ".join(e["tag"] for e in self.entries()) or "none yet"
        raise InputError(f"no model {name!r} in {self.path} (known: {known})")


def lock_outs(root: Path) -> dict[str, str]:
    """Every stage output's content hash as recorded in dvc.lock (what `dvc checkout` restores)."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    return {o["path"]: o.get("md5") or o.get("hash", "") for st in stages.values() for o in st.get("outs", [])}


def git(root: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise InputError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def source_hashes(root: Path, params: Params) -> dict[str, str]:
    """Content hash of every ingest source (a directory: of its files in order)."""
    out = {}
    for s in params.ingest.sources:
        path = root / s.path
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + file_hash(f).encode())
        out[s.path] = h.hexdigest()[:16] if files and all(f.exists() for f in files) else "missing"
    return out


def training_data(sft: dict[str, dict[str, Any]], dpo: dict[str, Any]) -> dict[str, str | None]:
    """The content hash of what each training stage read, as it recorded it: each round's data file and the exact
    preference pairs DPO kept (after `dpo.sources` and `dpo.data_fraction`)."""
    out = {r: m.get("data_sha256") for r, m in sft.items()}
    return out | ({"dpo": dpo.get("pairs_sha256")} if dpo else {})


def lineage(root: Path, params: Params) -> dict[str, Any]:
    """Where the current workspace's model and scores come from, from the files the stages left behind."""
    from tunefold.eval.flask import TEMPLATE_HASH as FLASK_TEMPLATE
    from tunefold.eval.judge import template_hash
    from tunefold.eval.mtbench import load_judge_prompts

    outs = lock_outs(root)
    read = lambda rel: read_json(root / rel) if (root / rel).exists() else {}  # noqa: E731
    rounds = sorted(params.train.rounds) if params.train else []
    sft = {r: read(f"metrics/sft/{r}.json") for r in rounds}
    summary = read("reports/eval/summary.json")
    prompts_file = params.eval.mt_bench.judge_prompts
    prompts = load_judge_prompts(Path(root / prompts_file) if prompts_file else None)
    validate = read("metrics/validate.json")
    base = read("metrics/prepare_model.json")
    dirty = bool(git(root, "status", "--porcelain", "--untracked-files=no", check=False))
    return {
        "sources": source_hashes(root, params),
        "validation": {k: validate.get(k) for k in ("rows", "clean", "quarantined")},
        "validation_report": outs.get("reports/validate"),
        "curriculum": {p: h for p, h in outs.items() if p.startswith("data/curriculum/")},
        "training_data": training_data(sft, read("metrics/dpo.json")),
        "params_sha256": file_hash(root / "params.yaml")[:16],
        "code_commit": git(root, "rev-parse", "HEAD", check=False) or None,
        "code_dirty": dirty,
        "base_model": {"param": params.model.base, "hash": outs.get("models/base")}
        | {k: base[k] for k in BASE_SOURCE_KEYS if base.get(k) is not None},
        "chat_template": sorted({m.get("chat_template_sha256") for m in sft.values() if m}),
        "adapter": {"path": params.cycle.candidate_adapter, "hash": outs.get(params.cycle.candidate_adapter)},
        "judge": summary.get("judge", {}),
        "judge_prompts": {p.name: template_hash(p) for p in prompts.values()} | {"flask": FLASK_TEMPLATE},
    }


def _base_pin(base: dict[str, Any]) -> str:
    """The base's hub commit, package or source hash (entries made before these were recorded have none)."""
    if base.get("commit"):
        return f"commit {base['commit']}" + (f" (revision {base['revision']})" if base.get("revision") else "")
    parts = [base.get("package"), base.get("source_sha256") and f"sha256 {base['source_sha256'][:16]}"]
    return "  ".join(p for p in parts if p)


def print_lineage(entry: dict[str, Any]) -> str:
    """The chain from a registry entry, top (the model) to bottom (the data)."""
    lin = entry["lineage"]
    lines = [
        f"{entry['tag']}  ({'promoted' if entry['promoted'] else 'rejected'}: {entry['reason']})",
        f"  cycle {entry['cycle']} at {entry['time']}, commit {lin['code_commit']}"
        + (" (dirty)" if lin["code_dirty"] else ""),
        f"  adapter {lin['adapter']['path']}  {lin['adapter']['hash']}",
        f"  scores: MT-Bench {entry['scores']['mt_bench']} ({entry['scores']['mt_bench_judged']} judged, "
        f"{entry['scores']['mt_bench_failures']} unparseable), FLASK skills {len(entry['scores']['flask'])}",
        f"  judge: {lin['judge']}",
        "  judge prompts: " + ", ".join(f"{k}={v}" for k, v in sorted(lin["judge_prompts"].items())),
        f"  base model: {lin['base_model']['param']}  {lin['base_model']['hash']}  {_base_pin(lin['base_model'])}",
        f"  chat template: {', '.join(lin['chat_template']) or '-'}",
        f"  params.yaml sha256 {lin['params_sha256']}",
        "  training data: " + ", ".join(f"{r}={h}" for r, h in lin["training_data"].items()),
        "  curriculum: " + ", ".join(f"{p}={h}" for p, h in sorted(lin["curriculum"].items())),
        f"  validation: {lin['validation']}  report {lin['validation_report']}",
        "  sources: " + ", ".join(f"{p}={h}" for p, h in lin["sources"].items()),
    ]
    return "\n".join(lines)
