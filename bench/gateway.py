"""Benchmark: the gateway vs a plain sequential loop of `client.chat.completions.create` (what FastChat's judge
script does), on the embedded llama.cpp server; then a fully cached re-run.

Run: .venv/bin/python bench/gateway.py [--requests 200] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--latency-only", action="store_true", help="only the simulated-latency comparison")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.latency_only:
        print(json.dumps(latency_bound(args.requests // 2), indent=2))
        return

    from openai import OpenAI

    from tunefold.config import EmbeddedServerConfig, EndpointConfig, LLMConfig
    from tunefold.llm import ChatRequest, Gateway
    from tunefold.llm.server import EmbeddedServer

    prompts = [f"Give a one-word answer: what colour is item number {i}?" for i in range(args.requests)]
    server = EmbeddedServer(EmbeddedServerConfig()).start()
    results: dict[str, float | int] = {"requests": args.requests, "max_tokens": args.max_tokens}
    try:
        client = OpenAI(base_url=server.base_url, api_key="none")
        t0 = time.perf_counter()
        for text in prompts:
            client.chat.completions.create(
                model=server.alias, messages=[{"role": "user", "content": text}], temperature=0,
                max_tokens=args.max_tokens,
            )  # fmt: skip
        base = time.perf_counter() - t0
        results["plain_loop_s"] = round(base, 2)
        reqs = [ChatRequest(messages=[{"role": "user", "content": t}], max_tokens=args.max_tokens) for t in prompts]
        with tempfile.TemporaryDirectory() as tmp:
            for conc in (1, 4, 8):
                ep = EndpointConfig(base_url=server.base_url, model=server.alias, concurrency=conc)
                cache = Path(tmp) / f"c{conc}"
                with Gateway(LLMConfig(teacher=ep), "bench", cache) as gw:
                    t0 = time.perf_counter()
                    out = gw.batch("teacher", reqs)
                    took = time.perf_counter() - t0
                    assert all(r.ok for r in out)
                results[f"gateway_c{conc}_s"] = round(took, 2)
                results[f"speedup_c{conc}_vs_plain"] = round(base / took, 2)
            with Gateway(LLMConfig(teacher=ep), "bench", cache) as gw:
                t0 = time.perf_counter()
                out = gw.batch("teacher", reqs)
                took = time.perf_counter() - t0
                results["cached_rerun_calls_sent"] = gw.metrics()["teacher"]["calls_sent"]
                results["cached_rerun_s"] = round(took, 3)
                results["cached_s_per_1k_items"] = round(took / args.requests * 1000, 3)
    finally:
        server.stop()
    print(json.dumps(results, indent=2))
    print(json.dumps(latency_bound(args.requests // 2), indent=2))


def latency_bound(n: int, latency: float = 0.2) -> dict[str, float | int]:
    """The same comparison against a loopback server that takes `latency` seconds per reply and serves requests
    in parallel, as hosted APIs and vLLM do (llama-cpp-python's server answers one request at a time)."""
    from openai import OpenAI

    from tests.faults import FaultServer
    from tunefold.config import EndpointConfig, LLMConfig
    from tunefold.llm import ChatRequest, Gateway

    out: dict[str, float | int] = {"requests": n, "server_latency_s": latency}
    with FaultServer(default=f"slow:{latency}") as srv, tempfile.TemporaryDirectory() as tmp:
        client = OpenAI(base_url=srv.base_url, api_key="none")
        t0 = time.perf_counter()
        for i in range(n):
            client.chat.completions.create(model="fault-model", messages=[{"role": "user", "content": f"q{i}"}])
        base = time.perf_counter() - t0
        out["plain_loop_s"] = round(base, 2)
        for conc in (1, 4, 8):
            ep = EndpointConfig(base_url=srv.base_url, model="fault-model", concurrency=conc)
            with Gateway(LLMConfig(judge=ep), "bench", Path(tmp) / f"c{conc}") as gw:
                t0 = time.perf_counter()
                gw.batch("judge", [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(n)])
                took = time.perf_counter() - t0
            out[f"gateway_c{conc}_s"] = round(took, 2)
            out[f"speedup_c{conc}_vs_plain"] = round(base / took, 2)
    return out


if __name__ == "__main__":
    main()
