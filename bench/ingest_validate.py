"""Benchmark: ingest + validate throughput vs a plain pandas read + dedupe; `dvc repro` no-op; Prefect overhead.

Run: .venv/bin/python bench/ingest_validate.py [--rows 100000]
Prints rows/s for both paths and their ratio (ours does far more work per row: shape detection, schema,
content hashes, normalised dedupe, chat-template token counts and a GX suite; the ratio is the price of that).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "river",
    "mountain",
    "code",
    "python",
    "number",
    "seven",
    "answer",
    "question",
    "explain",
    "why",
    "how",
]


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            if i % 50 == 49:  # 2% exact duplicates of an earlier row
                j = rng.randrange(i)
                rng_j = random.Random(j)
                row = {"instruction": " ".join(rng_j.choices(WORDS, k=12)) + f" #{j}?", "input": "",
                       "output": " ".join(rng_j.choices(WORDS, k=40)) + "."}  # fmt: skip
            else:
                rng_i = random.Random(i)
                row = {"instruction": " ".join(rng_i.choices(WORDS, k=12)) + f" #{i}?", "input": "",
                       "output": " ".join(rng_i.choices(WORDS, k=40)) + "."}  # fmt: skip
            f.write(json.dumps(row) + "\n")


def bench_throughput(n: int, work: Path, model_dir: Path) -> dict[str, float]:
    import pandas as pd

    from tasks.ingest import ingest
    from tasks.validate import validate
    from tunefold.config import IngestConfig, SourceConfig, ValidateConfig

    src = work / "rows.jsonl"
    generate(src, n)

    t0 = time.perf_counter()
    frame = pd.read_json(src, lines=True)
    frame = frame.drop_duplicates()
    t_base = time.perf_counter() - t0

    t0 = time.perf_counter()
    m = ingest(IngestConfig(sources=[SourceConfig(path=str(src))]), work / "ingest")
    t_ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    v = validate(ValidateConfig(), work / "ingest/records.jsonl", model_dir, work / "validate", work / "report")
    t_validate = time.perf_counter() - t0
    assert len(frame) == m["records_kept"] == v["clean"], (len(frame), m["records_kept"], v["clean"])
    ours = t_ingest + t_validate
    return {
        "rows": n,
        "baseline_pandas_s": round(t_base, 2),
        "baseline_rows_per_s": round(n / t_base),
        "ingest_s": round(t_ingest, 2),
        "validate_s": round(t_validate, 2),
        "ours_rows_per_s": round(n / ours),
        "ingest_rows_per_s": round(n / t_ingest),
        "slowdown_vs_baseline": round(ours / t_base, 1),
    }


def sh(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def stage_seconds(repo: Path, stages: list[str]) -> float:
    return sum(json.loads((repo / f"metrics/{s}.json").read_text())["seconds"] for s in stages)


def bench_orchestration(work: Path) -> dict[str, float]:
    from tests.conftest import copy_project

    repo = copy_project(work / "repo")
    dvc = [sys.executable, "-m", "dvc"]
    sh([*dvc, "repro"], repo)
    noop = min(sh([*dvc, "repro"], repo) for _ in range(3))
    stages = ["ingest", "validate"]
    t_dvc = sum(sh([*dvc, "repro", "--single-item", "--force", s], repo) for s in stages)
    dvc_stage = stage_seconds(repo, stages)
    cli = [sys.executable, "-m", "tunefold.cli", "run", "--stages", *stages, "--force"]
    t_flow = sh(cli, repo)
    flow_stage = stage_seconds(repo, stages)
    return {
        "dvc_repro_noop_s": round(noop, 2),
        "dvc_overhead_s": round(t_dvc - dvc_stage, 2),
        "prefect_flow_wall_s": round(t_flow, 2),
        "prefect_flow_overhead_s": round(t_flow - flow_stage, 2),
        "prefect_overhead_over_dvc_s": round((t_flow - flow_stage) - (t_dvc - dvc_stage), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--skip-orchestration", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from bench.common import base_model

        model_dir = base_model(work)
        result = bench_throughput(args.rows, work, model_dir)
        print(json.dumps(result, indent=2))
        if not args.skip_orchestration:
            shutil.rmtree(work / "ingest", ignore_errors=True)
            print(json.dumps(bench_orchestration(work), indent=2))


if __name__ == "__main__":
    main()
