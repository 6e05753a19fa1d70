"""Benchmark: the embedded model served in its own quantized format (native, what llama.cpp loads by default) vs
widened to bf16 and f16 (`llm.embedded.compute`), on the embedded server as the pipeline runs it.

For each format: the wall time of the two workloads of bench/engine_batching.py (short teacher answers; the
mt_bench stage's judge prompts, JSON mode), and how close its next-token predictions are to the unquantized model's
(the fp32 checkpoint `models/base`, which is the GGUF's weights dequantized by transformers): the share of positions
where both pick the same top token and the mean KL divergence, over the judge prompts teacher-forced. Prints the
ratio of each format's speed to native's.

Run: .venv/bin/python bench/embedded_compute.py [--requests 32] [--formats native,bf16,f16] [--slots 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import base_model  # noqa: E402
from bench.engine_batching import bodies, send  # noqa: E402


def fidelity(gguf: Path, base: Path, conversations: list[list[dict[str, str]]]) -> dict[str, float]:
    """Top-1 agreement and mean KL(fp32 || gguf) of next-token distributions over `conversations`, each formatted
    with the checkpoint's chat template and fed whole to both models."""
    import llama_cpp
    import numpy as np
    import torch

    from tunefold.train.models import load_model, load_tokenizer

    tok = load_tokenizer(base)
    model = load_model(base).float().eval()
    llm = llama_cpp.Llama(str(gguf), n_ctx=2048, logits_all=True, verbose=False)
    same = positions = 0
    kl = 0.0
    for messages in conversations:
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)[:1024]
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        llm.reset()
        llm.eval(ids)
        got = torch.log_softmax(torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float64)), -1)
        same += int((ref.argmax(-1) == got.argmax(-1)).sum())
        kl += float((ref.exp() * (ref - got)).sum())
        positions += len(ids)
    llm.close()
    return {"top1_agreement": round(same / positions, 4), "kl": round(kl / positions, 6), "positions": positions}


def run(compute: str, requests: dict[str, list[dict]], slots: int) -> dict:
    from tunefold.config import EmbeddedServerConfig
    from tunefold.llm.server import EmbeddedServer

    server = EmbeddedServer(EmbeddedServerConfig(slots=slots, compute=compute)).start()
    try:
        out = {kind: send(server.base_url, server.alias, reqs, slots) for kind, reqs in requests.items()}
    finally:
        server.stop()
    return {"alias": server.alias, "gguf": server.gguf, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--formats", default="native,bf16,f16")
    args = ap.parse_args()

    import tunefold  # noqa: F401  (the pipeline's OpenMP policy)
    from bench.engine_batching import judge_messages

    requests = {kind: bodies(kind, args.requests, args.max_tokens) for kind in ("teacher", "judge")}
    with tempfile.TemporaryDirectory() as scratch:
        base = base_model(Path(scratch))
        results = {}
        for compute in args.formats.split(","):
            r = run(compute, requests, args.slots)
            r["fidelity"] = fidelity(r["gguf"], base, judge_messages(args.requests)[::4])
            results[compute] = r
    native = results.get("native") or next(iter(results.values()))
    summary = {}
    for compute, r in results.items():
        row: dict[str, object] = {"alias": r["alias"], **r["fidelity"]}
        for kind in requests:
            row[f"{kind}_s"] = r[kind]["seconds"]
            row[f"{kind}_ratio"] = round(native[kind]["seconds"] / r[kind]["seconds"], 2)
            pairs = zip(r[kind]["texts"], native[kind]["texts"], strict=True)
            row[f"{kind}_same_as_native"] = sum(a == b for a, b in pairs)
        summary[compute] = row
        f = r["fidelity"]
        print(
            f"{compute:7s} ({r['alias']}): teacher {row['teacher_s']} s ({row['teacher_ratio']}x), judge "
            f"{row['judge_s']} s ({row['judge_ratio']}x); vs fp32: top-1 {f['top1_agreement']:.2%}, KL {f['kl']:.5f}"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
