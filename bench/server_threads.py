"""Benchmark: the embedded llama.cpp server decoding on llama-cpp-python's default thread count (half the cores)
vs on every core the process may use (`llm.embedded.n_threads` set to `tunefold.cores.usable_cores()`).

Decoding one sequence at a time (the judge and teacher stages) leaves the other half of the cores idle, but each
decode step is many small kernels, and with the pipeline's `OMP_WAIT_POLICY=PASSIVE` the extra threads sleep and
wake for each of them. Both servers answer the same chat requests greedily under the environment's policy (run it
again with `OMP_WAIT_POLICY=ACTIVE` to see the spinning case); the bench prints tokens/s of each, the ratio, and
whether every greedy answer is the same text (the gateway's cache key does not include the thread count).

Run: .venv/bin/python bench/server_threads.py [--requests 6] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import QUESTIONS  # noqa: E402


def measure(n_threads: int, requests: int, max_tokens: int) -> dict:
    import httpx

    from tunefold.config import EmbeddedServerConfig
    from tunefold.llm.server import EmbeddedServer

    server = EmbeddedServer(EmbeddedServerConfig(n_threads=n_threads)).start()
    try:
        answers, tokens, start = [], 0, time.perf_counter()
        for question in (QUESTIONS * 4)[:requests]:
            body = {
                "model": server.alias,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": max_tokens,
                "temperature": 0.0,
            }
            reply = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=600).json()
            answers.append(reply["choices"][0]["message"]["content"])
            tokens += reply["usage"]["completion_tokens"]
        seconds = time.perf_counter() - start
    finally:
        server.stop()
    return {"n_threads": n_threads, "tokens": tokens, "seconds": round(seconds, 2), "answers": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()

    from tunefold.cores import usable_cores

    cores = usable_cores()
    baseline = measure(max(cores // 2, 1), args.requests, args.max_tokens)
    ours = measure(cores, args.requests, args.max_tokens)
    rate = {run["n_threads"]: run["tokens"] / run["seconds"] for run in (baseline, ours)}
    same = baseline["answers"] == ours["answers"]
    print(f"cores usable: {cores} (os.cpu_count {os.cpu_count()})")
    for run in (baseline, ours):
        n = run["n_threads"]
        print(f"n_threads={n}: {run['tokens']} tokens in {run['seconds']} s = {rate[n]:.1f} tok/s")
    print(f"ratio (all cores / default half): {rate[ours['n_threads']] / rate[baseline['n_threads']]:.2f}x")
    print(f"greedy answers identical: {same}")
    summary = {"cores": cores, "baseline": baseline | {"answers": None}, "ours": ours | {"answers": None}, "same": same}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
