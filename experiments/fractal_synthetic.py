"""FRACTAL against known sentence truth: sentence-level AUC-ROC of the scorer vs the response-label baseline.

Responses are built from real answer sentences (the project's sample data and the Self-Instruct seed tasks) whose
labels are known: a good sentence is a sentence of the question's own reference answer; a bad one is either
off-topic (a sentence of another task's answer) or degenerate (a shuffled, truncated copy of a good sentence with
a stuttered word, like a small model's failure). Each response gets 2-6 sentences and one label:
  MIN dataset: 1 iff every sentence is good (binary; 25% of sentences bad)
  MAX dataset: 1 iff any sentence is good (binary; 70% bad)
  AVG dataset: the share of good sentences (a proportion; 40% bad)
Tasks are split 70/30; the scorer trains on responses of the training tasks and is measured on every sentence of
the held-out tasks' responses. Baseline: every sentence gets its response's label. Prior: (1 + cos)/2 alone.

Run: .venv/bin/python experiments/fractal_synthetic.py [--responses 600] [--seeds 0 1 2]
Prints a Markdown table (mean AUC over the seeds).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tunefold.config import FractalConfig  # noqa: E402
from tunefold.data.readers import read_rows  # noqa: E402
from tunefold.data.shapes import convert_row  # noqa: E402
from tunefold.fractal.auc import auc_roc  # noqa: E402
from tunefold.fractal.split import split_sentences  # noqa: E402

SOURCES = [*sorted((ROOT / "data/sample").glob("*.jsonl")), ROOT.parent / "shared/data/self_instruct_seed_tasks.jsonl"]
DATASETS = {"MIN": ("min", 0.25), "MAX": ("max", 0.7), "AVG": ("avg", 0.4)}  # truth aggregate, share of bad


def load_tasks(paths: list[Path]) -> list[tuple[str, list[str]]]:
    """(question, sentences of its answer) for every conversation whose answer has at least one sentence."""
    tasks = []
    for path in paths:
        if not path.exists():
            continue
        for raw in read_rows(path, "jsonl"):
            if raw.row is None:
                continue
            for messages, _ in convert_row(raw.row)[1]:
                question = next(m.content for m in reversed(messages) if m.role == "user")
                sentences = [s for s in split_sentences(messages[-1].content) if len(s.split()) >= 3]
                if sentences:
                    tasks.append((question, sentences))
    return tasks


def degenerate(sentence: str, rng: random.Random) -> str:
    words = sentence.split()
    kept = rng.sample(words, max(2, len(words) // 2))
    stutter = rng.choice(kept)
    return " ".join([*kept, stutter, stutter, stutter])


def build(
    tasks: list[tuple[str, list[str]]], others: list[str], how: str, bad_share: float, n: int, rng: random.Random
) -> list[dict[str, Any]]:
    """`n` responses to questions of `tasks`, each sentence good or bad by a coin with P(bad) = `bad_share`."""
    out = []
    for _ in range(n):
        question, good = rng.choice(tasks)
        sentences, truth = [], []
        for _ in range(rng.randint(2, 6)):
            if rng.random() < bad_share:
                bad = rng.choice(others) if rng.random() < 0.5 else degenerate(rng.choice(good), rng)
                sentences.append(bad)
                truth.append(0)
            else:
                sentences.append(rng.choice(good))
                truth.append(1)
        label = {"min": min, "max": max}.get(how, lambda t: sum(t) / len(t))(truth)
        out.append({"question": question, "sentences": sentences, "truth": truth, "label": float(label)})
    return out


def to_data(responses: list[dict[str, Any]], vectors: dict[str, Any]) -> Any:
    import torch

    from tunefold.fractal.scorer import BagData

    sent = [torch.stack([vectors[s] for s in r["sentences"]]) for r in responses]
    contexts = torch.stack([vectors[r["question"]] for r in responses])
    return BagData.build(sent, contexts, [r["label"] for r in responses])


VARIANTS: dict[str, dict[str, Any]] = {
    "bag loss only": {"lambda_cos": 0.0, "lambda_corr": 0.0, "pseudo_label": False},
    "+ priors": {"pseudo_label": False},
    "+ pseudo-labels": {"lambda_cos": 0.0, "lambda_corr": 0.0, "pseudo_label": True},
    "+ priors + pseudo-labels": {"pseudo_label": True},
}


def run(seed: int, n: int, base: FractalConfig, embedder: Any) -> dict[tuple[str, str], dict[str, float]]:
    """AUC per (row, dataset) for one seed."""
    from tunefold.fractal.scorer import train_scorer

    rng = random.Random(seed)
    tasks = load_tasks(SOURCES)
    rng.shuffle(tasks)
    cut = int(0.7 * len(tasks))
    train_tasks, test_tasks = tasks[:cut], tasks[cut:]
    results: dict[tuple[str, str], dict[str, float]] = {}
    for name, (how, bad_share) in DATASETS.items():
        train_r = build(train_tasks, [s for _, ss in train_tasks for s in ss], how, bad_share, n, rng)
        test_r = build(test_tasks, [s for _, ss in test_tasks for s in ss], how, bad_share, n // 2, rng)
        texts = sorted({t for r in train_r + test_r for t in [r["question"], *r["sentences"]]})
        vectors = dict(zip(texts, embedder.encode(texts), strict=True))
        train, test = to_data(train_r, vectors), to_data(test_r, vectors)
        truth = [t for r in test_r for t in r["truth"]]
        results[("baseline: response label", name)] = {"auc": auc_roc(truth, test.labels[test.bag_of].tolist())}
        results[("prior (1 + cos)/2 alone", name)] = {"auc": auc_roc(truth, test.prior().tolist())}
        for agg in ("min", "max", "avg"):
            for variant, update in VARIANTS.items():
                cfg = base.model_copy(update={"aggregation": agg, "seed": seed, **update})
                t0 = time.perf_counter()
                scorer, _ = train_scorer(train, cfg)
                seconds = time.perf_counter() - t0
                auc = auc_roc(truth, scorer.predict(test).tolist())
                results[(f"FRACTAL {agg.upper()}: {variant}", name)] = {"auc": auc, "seconds": seconds}
        print(
            f"seed {seed} {name}: {len(train.sentences)} train / {len(truth)} test sentences "
            f"({1 - sum(truth) / len(truth):.0%} bad)",
            file=sys.stderr,
        )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--responses", type=int, default=600, help="training responses per dataset")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=FractalConfig().epochs)
    args = p.parse_args()
    from tunefold.fractal.embed import Embedder

    embedder = Embedder()
    base = FractalConfig(epochs=args.epochs)
    runs = [run(seed, args.responses, base, embedder) for seed in args.seeds]
    rows = list(dict.fromkeys(row for row, _ in runs[0]))
    print(
        f"Sentence-level AUC-ROC on held-out tasks, mean over seeds {args.seeds} "
        f"({args.responses} training responses per dataset, {args.epochs} epochs)\n"
    )
    print("| scorer | " + " | ".join(f"{d} truth" for d in DATASETS) + " |")
    print("|---|" + "---|" * len(DATASETS))
    for row in rows:
        cells = []
        for d in DATASETS:
            aucs = [r[(row, d)]["auc"] for r in runs]
            spread = f" ± {statistics.stdev(aucs):.3f}" if len(aucs) > 1 else ""
            cells.append(f"{statistics.mean(aucs):.3f}{spread}")
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
