"""Benchmark: our SFT stage vs a plain SFTTrainer script with trl defaults (same model, data, LoRA, steps), and
peak memory of SFT and DPO. Each configuration runs in its own process so peak RSS is its own.

Run: .venv/bin/python bench/training.py [--steps 8]
Data: the 175 Self-Instruct seed tasks from ../shared/data when present (varied lengths), else the sample data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEED_TASKS = ROOT.parent / "shared/data/self_instruct_seed_tasks.jsonl"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make_data(work: Path) -> Path:
    from tasks.ingest import ingest
    from tunefold.config import IngestConfig, SourceConfig

    paths = (
        [SEED_TASKS] if SEED_TASKS.exists() else [ROOT / "data/sample/alpaca.jsonl", ROOT / "data/sample/chat.jsonl"]
    )
    sources = [SourceConfig(path=str(p)) for p in paths]
    ingest(IngestConfig(sources=sources), work / "ingest")
    return work / "ingest/records.jsonl"


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_ours(data: Path, base: Path, work: Path, steps: int) -> dict:
    from tasks.sft import train_sft
    from tunefold.config import LoraSettings, SFTRound, TrainConfig

    cfg = TrainConfig(lora=LoraSettings(target_modules=TARGETS), max_length=512, batch_size=4, save_steps=10_000,
                      rounds={"r1": SFTRound(data=str(data), init=str(base), max_steps=steps)})  # fmt: skip
    t0 = time.perf_counter()
    m = train_sft(cfg, "r1", base, work / "ours", work / "ours_ckpt", work / "ours.tsv")
    return {"real_tokens": m["real_tokens"], "seconds": round(time.perf_counter() - t0, 1),
            "train_seconds": m["seconds_training"], "tokens_per_s": m["real_tokens_per_second"]}  # fmt: skip


def run_trl_defaults(data: Path, base: Path, work: Path, steps: int) -> dict:
    """What a user writes from trl's docs: SFTTrainer on a messages dataset, only what CPU forces changed."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    ds = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    args = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, use_cpu=True, bf16=False, report_to="none",
                     save_strategy="no")  # fmt: skip
    t0 = time.perf_counter()
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=str(base), args=args, train_dataset=ds, peft_config=lora)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    tokens = max(e.get("num_tokens", 0) for e in trainer.state.log_history)
    return {"real_tokens": int(tokens), "seconds": round(time.perf_counter() - t0, 1),
            "train_seconds": round(train_s, 1), "tokens_per_s": round(tokens / train_s, 1)}  # fmt: skip


def run_dpo(data: Path, base: Path, work: Path, steps: int, second_ref: bool) -> dict:
    """Our DPO stage (reference = adapter-disabled model), or the same with an explicit second reference model."""
    from tasks.dpo import train_dpo
    from tasks.sft import train_sft
    from tunefold.config import DPOSettings, LoraSettings, SFTRound, TrainConfig

    prefs = work / "prefs.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    with prefs.open("w") as f:
        for i, r in enumerate(rows):  # rejected = another row's answer: a clear preference, fine for a memory test
            f.write(json.dumps(r | {"rejected": rows[(i + 1) % len(rows)]["messages"][-1]["content"]}) + "\n")
    cfg = TrainConfig(lora=LoraSettings(target_modules=TARGETS), max_length=512, batch_size=2, save_steps=10_000,
                      rounds={"r1": SFTRound(data=str(data), init=str(base), max_steps=1)})  # fmt: skip
    train_sft(cfg, "r1", base, work / "sft", work / "sft_ckpt", work / "sft.tsv")
    dpo = DPOSettings(init=str(work / "sft"), data=str(prefs), max_steps=steps, batch_size=2, max_length=512)
    if second_ref:
        import trl
        from transformers import AutoModelForCausalLM

        original = trl.DPOTrainer.__init__

        def with_ref(self, *a, **kw):  # a user who loads the reference as a second full model
            kw["ref_model"] = AutoModelForCausalLM.from_pretrained(base)
            original(self, *a, **kw)

        trl.DPOTrainer.__init__ = with_ref
    t0 = time.perf_counter()
    m = train_dpo(dpo, cfg, base, work / "dpo", work / "dpo_ckpt", work / "dpo.tsv")
    return {"pairs": m["pairs"], "steps": m["steps"], "seconds": round(time.perf_counter() - t0, 1)}


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    data, base = work / "ingest/records.jsonl", work / "base"
    if args.run == "ours":
        out = run_ours(data, base, work, args.steps)
    elif args.run == "trl_defaults":
        out = run_trl_defaults(data, base, work, args.steps)
    else:
        out = run_dpo(data, base, work, args.steps, second_ref=args.run == "dpo_second_ref")
    print(json.dumps(out | {"peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.run:
        return child(args)
    from tasks.prepare_model import prepare_model
    from tunefold.config import ModelConfig

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_data(work)
        prepare_model(ModelConfig(), work / "base")
        results = {}
        for run in ("trl_defaults", "ours", "dpo", "dpo_second_ref"):
            cmd = [sys.executable, __file__, "--run", run, "--work", tmp, "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                raise SystemExit(f"{run} failed:\n{out.stderr[-3000:]}")
            results[run] = json.loads(out.stdout.strip().splitlines()[-1])
            print(run, json.dumps(results[run]), flush=True)
        ratio = results["ours"]["tokens_per_s"] / results["trl_defaults"]["tokens_per_s"]
        print(json.dumps({"real_tokens_per_s_ratio_ours_vs_trl_defaults": round(ratio, 2),
                          "dpo_rss_saving_mb": round(results["dpo_second_ref"]["peak_rss_mb"]
                                                     - results["dpo"]["peak_rss_mb"], 1)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
