"""Benchmark: training time and peak memory of the FRACTAL scorer on 10k sentences on the CPU, against the plain
loop a user would write (the same MLP trained with per-sentence BCE on its response's label), plus the cost of
embedding real sentences with the embedded MiniLM. Each run is its own process, so its peak RSS is its own.

The training runs use random 384-dim unit vectors (all-MiniLM-L6-v2's size) in 2,000 responses of 5 sentences:
the time of an MLP step does not depend on what the vectors mean. Epochs, batch and layers: the defaults.

Run: .venv/bin/python bench/fractal.py [--sentences 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunefold.fractal.scorer import BagData

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]
PER_RESPONSE = 5


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def make_data(sentences: int) -> BagData:
    import torch

    from tunefold.fractal.scorer import BagData

    gen = torch.Generator().manual_seed(0)
    bags = sentences // PER_RESPONSE
    sent = [torch.nn.functional.normalize(torch.randn(PER_RESPONSE, 384, generator=gen), dim=-1) for _ in range(bags)]
    ctx = torch.nn.functional.normalize(torch.randn(bags, 384, generator=gen), dim=-1)
    labels = torch.randint(0, 2, (bags,), generator=gen).float().tolist()
    return BagData.build(sent, ctx, labels)


def run_plain(sentences: int, threads: int | None = None) -> dict:
    """The MLP with the same layers, epochs and learning rate, every sentence trained on its response's label;
    torch's default thread count unless `threads` (the scorer trains on one thread)."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    from tunefold.config import FractalConfig
    from tunefold.fractal.scorer import mlp

    cfg = FractalConfig()
    data = make_data(sentences)
    x = data.features(torch.arange(len(data.sentences)))
    y = data.labels[data.bag_of]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = mlp(x.shape[1], cfg.hidden_dim, cfg.hidden_layers)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x)).split(cfg.batch_size * PER_RESPONSE):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx]).squeeze(-1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"train_seconds": round(time.perf_counter() - t0, 2)}


def run_fractal(sentences: int, pseudo: bool) -> dict:
    from tunefold.config import FractalConfig
    from tunefold.fractal.scorer import train_scorer

    data = make_data(sentences)
    t0 = time.perf_counter()
    _, stats = train_scorer(data, FractalConfig(pseudo_label=pseudo))
    return {"train_seconds": round(time.perf_counter() - t0, 2), "loss": round(stats["loss"], 4)}


def run_embedding() -> dict:
    """Every distinct sentence and question of the sample data and the Self-Instruct seed tasks."""
    from fractal_synthetic import SOURCES, load_tasks

    from tunefold.fractal.embed import Embedder

    texts = sorted({t for question, sentences in load_tasks(SOURCES) for t in [question, *sentences]})
    t0 = time.perf_counter()
    embedder = Embedder()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    embedder.encode(texts)
    enc_s = time.perf_counter() - t0
    return {"texts": len(texts), "load_seconds": round(load_s, 2), "encode_seconds": round(enc_s, 2),
            "texts_per_second": round(len(texts) / enc_s, 1)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=10_000)
    p.add_argument("--run", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.run:
        runs = {"plain": lambda: run_plain(args.sentences), "plain_one_thread": lambda: run_plain(args.sentences, 1),
                "fractal": lambda: run_fractal(args.sentences, True),
                "fractal_no_pseudo": lambda: run_fractal(args.sentences, False),
                "embedding": run_embedding}  # fmt: skip
        print(json.dumps(runs[args.run]() | {"peak_rss_mb": peak_rss_mb()}))
        return
    results = {"load_average_before": os.getloadavg()[0]}
    for run in ("plain", "plain_one_thread", "fractal_no_pseudo", "fractal", "embedding"):
        cmd = [sys.executable, __file__, "--run", run, "--sentences", str(args.sentences)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"{run} failed:\n{out.stderr[-3000:]}")
        results[run] = json.loads(out.stdout.strip().splitlines()[-1])
        print(run, json.dumps(results[run]), flush=True)
    results["load_average_after"] = os.getloadavg()[0]
    emb = results["embedding"]
    for plain in ("plain", "plain_one_thread"):
        ratio = results["fractal"]["train_seconds"] / results[plain]["train_seconds"]
        results[f"fractal_vs_{plain}_time"] = round(ratio, 2)
    results[f"embedding_{args.sentences}_sentences_seconds"] = round(args.sentences / emb["texts_per_second"], 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
