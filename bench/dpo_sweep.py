"""The DPO data-efficiency study (Bernardelle & Demartini): DPO on nested, per-source-stratified fractions of the
preference pool (`dpo.data_fraction`, tunefold/data/subsets.py), each evaluated by the pipeline's own stages against
DPO's starting point, as `dvc exp` experiments of this checkout (only `dpo` and what follows re-run).

    python bench/dpo_sweep.py run --fractions 0.2 0.4 0.6 0.8   # run them; HEAD's own run is the 1.0 point
    python bench/dpo_sweep.py show --plot bench/dpo_sweep.png   # the Markdown table of HEAD and every experiment

`run` is `dvc exp run -S dpo.data_fraction=F` per fraction, in this workspace (see `run`); `show` reads each
experiment's committed metrics from its git ref, so it needs nothing but the refs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout


def run(fractions: list[float], extra: list[str]) -> None:
    """One `dvc exp run` per fraction in this workspace, one after the other: a queued or `--temp` experiment runs
    in a fresh clone without the untracked gateway cache (`llm.cache_dir`), so it would re-ask the judge about the
    baseline's unchanged answers. The workspace must be clean; it is back at HEAD's outputs afterwards."""
    if _run(["git", "status", "--porcelain", "--untracked-files=no"]).strip():
        sys.exit("dpo_sweep: commit or stash your changes first (each experiment is recorded against HEAD)")
    try:
        for f in fractions:
            print(f"dvc exp run -S dpo.data_fraction={f}", flush=True)
            sets = [x for kv in [f"dpo.data_fraction={f}", *extra] for x in ("-S", kv)]
            _run([sys.executable, "-m", "dvc", "exp", "run", *sets])
    finally:
        _run(["git", "checkout", "--", "."])
        _run([sys.executable, "-m", "dvc", "checkout", "--quiet"])


def _at(rev: str, path: str) -> Any:
    text = _run(["git", "show", f"{rev}:{path}"])
    return yaml.safe_load(text) if path.endswith(".yaml") else json.loads(text)


def point(rev: str) -> dict[str, Any]:
    """One run's fraction, pairs and scores, read from the files committed at `rev`."""
    params, dpo, mt, flask = (
        _at(rev, p) for p in ("params.yaml", "metrics/dpo.json", "metrics/mt_bench.json", "metrics/flask.json")
    )
    baseline = params["eval"]["baseline"]["model_id"]
    overall = mt["candidate"]["overall"]
    pairwise = mt.get(f"pairwise_vs_{baseline}") or {}
    paired = mt.get(f"paired_vs_{baseline}") or {}
    skills = [v["mean"] for v in flask["candidate"]["skill"].values() if v.get("mean") is not None]
    return {
        "rev": rev[:8],
        "fraction": params["dpo"]["data_fraction"],
        "pairs": dpo["pairs"],
        "by_source": dpo.get("pairs_by_source", {}),
        "pairs_sha256": dpo.get("pairs_sha256"),
        "steps": dpo["steps"],
        "train_loss": dpo.get("train_loss"),
        "last_reward_margin": dpo.get("last_reward_margin"),
        "heldout": _heldout(dpo.get("heldout") or {}),
        "mt_bench": overall.get("mean"),
        "interval": overall.get("interval"),
        "judged": overall.get("judged"),
        "failures": overall.get("failures"),
        "wtl": [pairwise.get(k) for k in ("win", "tie", "loss", "error")],
        "paired": [paired.get(k) for k in ("difference", "low", "high")],
        "flask_mean": round(sum(skills) / len(skills), 3) if skills else None,
        "baseline": baseline,
        "judge": mt.get("judge"),
    }


def _heldout(h: dict[str, Any]) -> str:
    """DPO's held-out reward accuracy and loss, start -> end ("-" for runs from before held-out validation)."""
    if not h.get("items"):
        return "-"
    start, kept = h["start"], h["kept"]
    return (
        f"{start['reward_accuracy']:.2f} -> {kept['reward_accuracy']:.2f}, "
        f"loss {start['loss']:.4f} -> {kept['loss']:.4f} ({h['items']} pairs)"
    )


def experiments(baseline: str) -> list[str]:
    """The baseline commit and the experiments run on it (DVC names their refs refs/exps/<baseline sha>/<name>)."""
    sha = _run(["git", "rev-parse", baseline]).strip()
    rows = _run(["git", "for-each-ref", "refs/exps", "--format", "%(refname) %(objectname)"]).splitlines()
    return [sha, *(exp for ref, exp in (row.split() for row in rows) if "".join(ref.split("/")[2:4]) == sha)]


COLUMNS = [
    "fraction",
    "pairs (by source)",
    "DPO steps",
    "train loss",
    "last reward margin",
    "held-out reward accuracy",
    "MT-Bench (95% CI; judged/failed)",
    "vs baseline W/T/L/err",
    "paired diff [95% CI]",
    "FLASK mean skill",
]


def table(points: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for p in sorted(points, key=lambda p: p["fraction"]):
        src = ", ".join(f"{k} {v}" for k, v in sorted(p["by_source"].items()))
        lo, hi = p["interval"] or (None, None)
        d, dl, dh = p["paired"]
        lines.append(
            f"| {p['fraction']:g} | {p['pairs']} ({src}) | {p['steps']} | {p['train_loss']} | "
            f"{p['last_reward_margin']:.4f} | {p['heldout']} | "
            f"{p['mt_bench']} ({lo}-{hi}; {p['judged']}/{p['failures']}) | "
            f"{'/'.join(str(x) for x in p['wtl'])} | {d} [{dl}, {dh}] | {p['flask_mean']} |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(points, key=lambda p: p["fraction"])
    x = [p["fraction"] for p in pts]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    means = [p["mt_bench"] for p in pts]
    low = [m - p["interval"][0] for m, p in zip(means, pts, strict=True)]
    high = [p["interval"][1] - m for m, p in zip(means, pts, strict=True)]
    left.errorbar(x, means, yerr=[low, high], marker="o", capsize=3)
    left.set(xlabel="share of the preference pool", ylabel="MT-Bench (candidate, 1-10)", title="score, 95% CI")
    right.plot(x, [p["last_reward_margin"] for p in pts], marker="o")
    right.set(xlabel="share of the preference pool", ylabel="DPO reward margin, last step", title="training")
    fig.suptitle(f"DPO data efficiency ({pts[-1]['judge']} judge)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one experiment per fraction, run one after the other")
    r.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another param for every experiment, e.g. dpo.learning_rate=5e-4 (then also run fraction 1.0)",
    )
    s = sub.add_parser("show", help="print the table of the baseline commit and every experiment run on it")
    s.add_argument("--plot", type=Path, help="also save the plot here (PNG)")
    s.add_argument("--baseline", default="HEAD", help="the commit the experiments were run on (default: HEAD)")
    args = ap.parse_args()
    if args.command == "run":
        run(args.fractions, args.set)
        return
    points = [point(rev) for rev in experiments(args.baseline)]
    print(table(points))
    if args.plot:
        plot(points, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
