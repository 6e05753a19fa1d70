"""Benchmark: the embedded batching server (tunefold.llm.batch_server, `llm.embedded.slots` requests decoded
together) vs llama-cpp-python's own server, which answers one request at a time (what the pipeline ran before, and
what a user would start with `python -m llama_cpp.server`). Both serve the same GGUF (the SmolLM2 one as it is, or its
widened copy: `--compute`) with their default threads.

Two workloads, as the stages send them, greedy: short free-text answers (teacher) and the mt_bench stage's own judge
prompts over the pipeline's answers (single grades and pairwise verdicts, JSON mode, ~400 prompt tokens each). Each
server gets the same requests, as many at once as it can use (the baseline: one; ours: its slots). Prints the wall
time and tokens/s of each, the ratio, and how many greedy replies are the same text.

`--company N` keeps N other processes busy (a Python loop each, one core's worth) during both runs: what a
server meets beside a training stage or the other test worker.

Run: .venv/bin/python bench/engine_batching.py [--requests 32] [--max-tokens 128] [--slots 8] [--company 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import QUESTIONS  # noqa: E402


def judge_messages(n: int) -> list[list[dict[str, str]]]:
    """MT-Bench judge prompts (single grades and both pairwise orders) over the pipeline's own answers
    (`data/eval/model_answer`, from `dvc repro`), as the mt_bench stage builds them."""
    from tunefold.eval import mtbench as mt

    bench = ROOT / "data/benchmarks/mt_bench_mini"
    questions = mt.load_questions(bench / "question.jsonl", bench / "reference_answer/tunefold-reference.jsonl")
    prompts = mt.load_judge_prompts(None)
    a = mt.load_answers(ROOT / "data/eval/model_answer/candidate.jsonl")
    b = mt.load_answers(ROOT / "data/eval/model_answer/sft.jsonl")
    out = []
    for q in questions:
        for turn in mt.judged_turns(q):
            single = mt.prompt_for(prompts, "single", q, turn)
            pair = mt.prompt_for(prompts, "pairwise", q, turn)
            out += [mt.single_messages(single, q, ans[q.question_id], turn) for ans in (a, b)]
            out += [mt.pair_messages(pair, q, x[q.question_id], y[q.question_id], turn) for x, y in ((a, b), (b, a))]
    return out[:n]


def bodies(kind: str, n: int, max_tokens: int) -> list[dict]:
    if kind == "judge":
        fmt = {"type": "json_object"}
        return [{"messages": m, "max_tokens": 256, "temperature": 0, "response_format": fmt} for m in judge_messages(n)]
    questions = [QUESTIONS[i % len(QUESTIONS)] + (f" (variant {i})" if i >= len(QUESTIONS) else "") for i in range(n)]
    return [
        {"messages": [{"role": "user", "content": q}], "max_tokens": max_tokens, "temperature": 0} for q in questions
    ]


def send(base_url: str, model: str, requests: list[dict], at_once: int) -> dict:
    import httpx

    def one(body: dict) -> dict:
        return httpx.post(f"{base_url}/chat/completions", json={"model": model} | body, timeout=900).json()

    start = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        replies = list(pool.map(one, requests))
    seconds = time.perf_counter() - start
    tokens = sum(r["usage"]["completion_tokens"] for r in replies)
    return {
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in replies),
        "texts": [r["choices"][0]["message"]["content"] for r in replies],
    }


def baseline(requests: dict[str, list[dict]], gguf: Path) -> dict[str, dict]:
    import httpx

    from tunefold.ports import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "ref"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        return {kind: send(f"http://127.0.0.1:{port}/v1", "ref", reqs, 1) for kind, reqs in requests.items()}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ours(requests: dict[str, list[dict]], slots: int, compute: str) -> tuple[dict[str, dict], Path]:
    """The replies of the embedded server, and the GGUF it served (the baseline serves the same file)."""
    from tunefold.config import EmbeddedServerConfig
    from tunefold.llm.server import EmbeddedServer

    server = EmbeddedServer(EmbeddedServerConfig(slots=slots, compute=compute)).start()
    try:
        return {kind: send(server.base_url, server.alias, reqs, slots) for kind, reqs in requests.items()}, server.gguf
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--company", type=int, default=0, help="busy processes beside both servers")
    ap.add_argument("--compute", default="native", help="llm.embedded.compute of the GGUF both serve")
    args = ap.parse_args()

    import tunefold  # noqa: F401  (the pipeline's OpenMP policy, inherited by both servers)

    requests = {kind: bodies(kind, args.requests, args.max_tokens) for kind in ("teacher", "judge")}
    company = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.company)]
    try:
        mine, gguf = ours(requests, args.slots, args.compute)
        base = baseline(requests, gguf)
    finally:
        for proc in company:
            proc.kill()
    summary = {}
    for kind in requests:
        b, o = base[kind], mine[kind]
        rate_b, rate_o = b["tokens"] / b["seconds"], o["tokens"] / o["seconds"]
        same = sum(x == y for x, y in zip(b["texts"], o["texts"], strict=True))
        print(f"{kind}: {len(b['texts'])} requests, {b['prompt_tokens']} prompt tokens")
        print(f"{kind}: llama_cpp.server {b['tokens']} tokens in {b['seconds']} s = {rate_b:.1f} tok/s")
        print(f"{kind}: batching ({args.slots} slots) {o['tokens']} tokens in {o['seconds']} s = {rate_o:.1f} tok/s")
        print(f"{kind}: ratio {rate_o / rate_b:.2f}x; same greedy text {same}/{len(b['texts'])}")
        summary[kind] = {
            "baseline_s": b["seconds"],
            "ours_s": o["seconds"],
            "ratio": round(rate_o / rate_b, 2),
            "same": same,
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
