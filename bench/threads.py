"""Benchmark: processes that share the cores, with OpenMP's default waiting (idle threads spin) vs the pipeline's
`OMP_WAIT_POLICY=PASSIVE` (idle threads sleep; `tunefold/cores.py`).

The pipeline runs llama.cpp (the embedded judge/teacher server) and torch (training, answering) at the same time:
the server waits for requests beside a stage, stages run side by side with `--jobs`, the test suite runs servers
beside stages. Both libraries run their kernels on libgomp thread teams. Each workload is measured alone and side
by side with the other, and three at once (two llama.cpp judges beside torch, as `mt_bench` and `flask` judging
beside `generate`: more busy threads than 2 cores), under each policy, every run in fresh processes:

- llama.cpp: the embedded GGUF answering chat requests greedily (`--requests`, `--max-tokens` each);
- torch: the converted base model generating a batch of 4 greedy answers of `--max-tokens` tokens.

Run: .venv/bin/python bench/threads.py [--requests 4] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import QUESTIONS  # noqa: E402


def work_llama(requests: int, max_tokens: int) -> int:
    import llama_cpp

    from tunefold.cores import usable_cores
    from tunefold.train.models import embedded_gguf

    cores = usable_cores()  # as the embedded server runs it
    model = llama_cpp.Llama(
        model_path=str(embedded_gguf()), n_ctx=2048, n_threads=cores, n_threads_batch=cores, verbose=False
    )
    tokens = 0
    for question in QUESTIONS[:requests]:
        messages = [{"role": "user", "content": question}]
        reply = model.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0)
        tokens += reply["usage"]["completion_tokens"]
    return tokens


def work_torch(base: Path, max_tokens: int) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base)
    batch = tok(QUESTIONS[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
    return 4 * max_tokens


def child(args: argparse.Namespace) -> None:
    """One workload in this process; prints its tokens and seconds (model loading excluded for both)."""
    start = time.perf_counter()
    if args.work == "llama":
        tokens = work_llama(args.requests, args.max_tokens)
    else:
        tokens = work_torch(Path(args.base), args.max_tokens)
    print(json.dumps({"tokens": tokens, "seconds": round(time.perf_counter() - start, 2)}))


# libgomp's waiting: unset spins ~300,000 iterations before sleeping, PASSIVE sleeps at once, a short spin count
# sleeps after a few microseconds (enough to catch the next kernel of the same decode step)
POLICIES = {
    "unset (libgomp default)": {},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "short spin (GOMP_SPINCOUNT=3000)": {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "3000"},
}


def run(works: list[str], policy: dict[str, str], args: argparse.Namespace, base: Path) -> dict[str, float]:
    """Start the workloads together, each in its own process, with `policy`'s OpenMP variables (others unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | policy
    cmd = [sys.executable, __file__, "--requests", str(args.requests), "--max-tokens", str(args.max_tokens)]
    procs = {
        f"{w}#{i}": subprocess.Popen(
            [*cmd, "--work", w, "--base", str(base)], env=env, stdout=subprocess.PIPE, text=True
        )
        for i, w in enumerate(works)
    }
    out = {}
    for w, proc in procs.items():
        result = json.loads(proc.communicate()[0].strip().splitlines()[-1])
        out[w] = round(result["tokens"] / result["seconds"], 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=4, help="llama.cpp chat requests")
    p.add_argument("--max-tokens", type=int, default=96, help="new tokens per answer")
    p.add_argument("--work", choices=["llama", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.work:
        child(args)
        return
    from bench.common import base_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = base_model(Path(tmp))
        for name, policy in POLICIES.items():
            for works in (["llama"], ["torch"], ["llama", "torch"], ["llama", "llama", "torch"]):
                measured = run(works, policy, args, base)
                rows.append({"policy": name, "processes": len(works), "tokens_per_second": measured})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    def speeds(policy: str, n: int) -> dict[str, float]:
        (row,) = (r for r in rows if r["policy"] == policy and r["processes"] == n)
        return row["tokens_per_second"]

    default, ratios = next(iter(POLICIES)), {}
    for name in list(POLICIES)[1:]:
        for n in (2, 3):
            base_speeds, these = speeds(default, n), speeds(name, n)
            ratios.setdefault(name, {})[f"{n} processes"] = {w: round(these[w] / base_speeds[w], 2) for w in these}
    print(json.dumps({"cpus": os.cpu_count(), "runs": rows, "ratio_vs_default": ratios}, indent=2))


if __name__ == "__main__":
    main()
