"""Evidence of value for the curriculum: LoRA SFT on (a) the ingested data as is (`plain`), (b) the curriculum's
rounds as fixed slices of the base model's difficulty (`static`), (c) the rounds TAPIR's way, round 2 re-measured
with the round 1 student (`adaptive`); the same optimizer-step budget per round (packed blocks of
`train.max_length`, so about the same tokens; the real token counts are printed), all evaluated by the pipeline's
own evaluation stages.

It works on a copy of the project (its tracked files), runs `dvc repro report` once per arm with different
params, and prints a Markdown table of both score profiles, whatever they show.

Run: .venv/bin/python experiments/curriculum_vs_plain.py [--arms static adaptive] [--steps 8] [--questions 1 5 9]
[--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARMS = ["plain", "static", "adaptive"]


def arm_params(base: dict[str, Any], arm: str, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """The plain arm trains `--plain-steps` steps on the clean data's training side (`holdout`'s train.jsonl, so
    every arm is measured against the same held-out conversations; default 2 x steps, the same optimizer steps;
    with a small curriculum, pick it so the real-token counts match), the curriculum arm `steps` per round."""
    p = json.loads(json.dumps(base))
    schedule = {"epochs": 100, "learning_rate": 2.0e-4}
    if arm == "plain":
        r1 = {"data": "data/holdout/train.jsonl", "init": "models/base", "max_steps": args.plain_steps or 2 * steps}
        p["train"]["rounds"] = {"r1": r1 | schedule}
        adapter = "models/sft/r1/adapter"
    else:
        p["train"]["rounds"] = {
            "r1": {"data": "data/curriculum/rounds/r1.jsonl", "init": "models/base", "max_steps": steps} | schedule,
            "r2": {"data": "data/curriculum/rounds/r2.jsonl", "init": "models/sft/r1/adapter", "max_steps": steps}
            | schedule,
        }
        p["curriculum"]["plan"]["adaptive"] = arm == "adaptive"
        adapter = "models/sft/r2/adapter"
    p["dpo"]["init"] = adapter  # DPO is not part of this comparison; keeps the params consistent
    p["eval"]["candidate"] = {"model_id": f"sft-{arm}", "adapter": adapter}
    p["eval"]["baseline"] = {"model_id": "base", "adapter": "models/base"}  # every arm has it; answered once
    p["eval"]["mt_bench"] |= {"question_ids": args.questions, "pairwise": False}
    p["eval"]["max_new_tokens"] = args.max_new_tokens
    p["curriculum"]["difficulty"]["max_instructions"] = args.max_instructions
    p["curriculum"]["synthesize"]["pool_size"] = args.pool_size
    if args.llm_cache:
        p["llm"]["cache_dir"] = str(args.llm_cache.resolve())
    return p


def run_arm(repo: Path, base: dict[str, Any], arm: str, args: argparse.Namespace) -> dict[str, Any]:
    (repo / "params.yaml").write_text(yaml.safe_dump(arm_params(base, arm, args.steps, args), sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    print(f"== arm {arm}: dvc repro report", flush=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "report"], cwd=repo, env=env, check=True)
    read = lambda rel: json.loads((repo / rel).read_text())  # noqa: E731
    rounds = ["r1"] if arm == "plain" else ["r1", "r2"]
    r2 = read("metrics/curriculum/round_r2.json") if arm != "plain" else {}
    sft = [read(f"metrics/sft/{r}.json") for r in rounds]
    mt, flask = read("metrics/mt_bench.json"), read("metrics/flask.json")
    cand = f"sft-{arm}"
    return {
        "steps": sum(m["steps"] for m in sft),
        "real_tokens": sum(m["real_tokens"] for m in sft),
        "records": sum(m["conversations"] for m in sft),
        "round_2": {k: r2.get(k) for k in ("mode", "records", "from_other_slices", "mean_mfd", "mean_mfd_planned")},
        "mt_bench": mt[cand],
        "flask": flask[cand],
    }


def fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def _round_2(result: dict[str, Any]) -> str:
    r2 = result.get("round_2") or {}
    return f"{fmt(r2.get('mean_mfd'))} / {fmt(r2.get('from_other_slices'))}" if r2.get("records") else "-"


def table(results: dict[str, dict[str, Any]]) -> str:
    arms = list(results)
    rows = [
        ["optimizer steps", *(fmt(results[a]["steps"]) for a in arms)],
        ["real tokens trained", *(fmt(results[a]["real_tokens"]) for a in arms)],
        ["training records", *(fmt(results[a]["records"]) for a in arms)],
        ["round 2: mean MFD (as measured) / records from round 1's slice", *(_round_2(results[a]) for a in arms)],
    ]
    mt_keys = sorted(k for k in results[arms[0]]["mt_bench"] if k == "overall" or k.startswith("category/"))
    for k in mt_keys:
        cells = [results[a]["mt_bench"].get(k, {}) for a in arms]
        rows.append([f"MT-Bench {k}", *(f"{fmt(c.get('mean'))} (n={c.get('judged', 0)})" for c in cells)])
    skills = sorted(set().union(*(results[a]["flask"].get("skill", {}) for a in arms)))
    for s in skills:
        cells = [results[a]["flask"].get("skill", {}).get(s, {}) for a in arms]
        rows.append([f"FLASK {s}", *(f"{fmt(c.get('mean'))} (n={c.get('n', 0)})" for c in cells)])
    head = ["", *arms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per curriculum round (plain: 2x)")
    ap.add_argument("--questions", type=int, nargs="*", default=[], help="MT-Bench question ids (default: all)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--max-instructions", type=int, help="curriculum.difficulty.max_instructions (a budget)")
    ap.add_argument("--pool-size", type=int, default=6, help="curriculum.synthesize.pool_size")
    ap.add_argument("--plain-steps", type=int, help="optimizer steps of the plain arm (default: 2 x --steps)")
    ap.add_argument(
        "--arms",
        nargs="+",
        default=ARMS,
        choices=ARMS,
        help="arms to run; with --keep, earlier results of the other arm are kept",
    )
    ap.add_argument(
        "--llm-cache", type=Path, help="an existing gateway cache to share (e.g. the checkout's .cache/llm)"
    )
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    args = ap.parse_args()
    from tests.conftest import copy_project

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        repo = work / "project"
        if not repo.exists():
            copy_project(repo)
        base = yaml.safe_load((ROOT / "params.yaml").read_text())
        saved = work / "results.json"
        results = json.loads(saved.read_text()) if saved.exists() else {}
        results |= {arm: run_arm(repo, base, arm, args) for arm in args.arms}
        saved.write_text(json.dumps(results, indent=2))
        results = {arm: results[arm] for arm in ARMS if arm in results}
        print(table(results))


if __name__ == "__main__":
    main()
