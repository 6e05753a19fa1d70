"""GPU check: the project's own SFT, QLoRA SFT, DPO and generation code on random-initialised models of real
shapes, with what a GPU user needs to know printed as one JSON object.

Models are built from configs (SmolLM2-135M, Qwen2.5-0.5B, Qwen2.5-7B dimensions; `--layers` cuts the 7B's depth,
and per-layer figures extrapolate to 28): memory and speed do not depend on the weight values, so no checkpoint
download is needed. The tokenizer is SmolLM2's (`--tokenizer`, a directory with its tokenizer files).

Asserts, per model: the stage ran on CUDA in bf16 (or fp16 where bf16 is missing) or 4-bit, with the attention the
device plan chose; loss finite and falling; DPO's reference is the frozen adapter, not a second model; where greedy
decoding repeats itself, its rows keep their answers beside sampled rows (MT-Bench's mixed temperatures). Prints
peak GPU memory, real (unpadded) tokens/s and MFU against 989 TFLOP/s (H100 dense bf16) and 798 TFLOP/s (one bf16
matmul measured on the H100 we use), and GPU vs CPU generation tokens/s for the same model.

Run on a GPU:   python bench/gpu.py --tokenizer TOKENIZER_DIR [--models smollm2,qwen0.5b,qwen7b] [--layers 4]
The test suite: python bench/gpu.py --tiny --tokenizer models/base  (a 2-layer model on the CPU, a minute)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK_TFLOPS = {"h100_dense_bf16": 989.0, "h100_measured_matmul": 798.0}
# name -> (architecture, config kwargs); published dimensions of each model family
SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": (
        "llama",
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
        },
    ),
    "smollm2": (
        "llama",
        {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "tie_word_embeddings": True,
            "rope_theta": 100000.0,
        },
    ),
    "qwen0.5b": (
        "qwen2",
        {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rope_theta": 1000000.0,
        },
    ),
    "qwen7b": (
        "qwen2",
        {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "tie_word_embeddings": False,
            "rope_theta": 1000000.0,
        },
    ),
}
WORDS = [
    "the",
    "model",
    "learns",
    "to",
    "answer",
    "questions",
    "about",
    "rivers",
    "mountains",
    "cities",
    "numbers",
    "colours",
    "animals",
    "planets",
    "music",
    "history",
    "chemistry",
    "gardens",
    "weather",
    "bridges",
    "languages",
    "stories",
    "recipes",
    "engines",
    "oceans",
    "forests",
    "markets",
]


def build_model(name: str, tokenizer_dir: Path, out: Path, layers: int | None, device: str) -> dict[str, Any]:
    """A random-initialised checkpoint of `name`'s shape with the SmolLM2 tokenizer, saved where the stages read a
    base model from. The vocabulary keeps the family's size (memory is what is measured); ids stay below 49152."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    arch, dims = SPECS[name]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    kw = {"vocab_size": len(tokenizer), **dims, "bos_token_id": tokenizer.bos_token_id}
    kw |= {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    full_layers = kw["num_hidden_layers"]
    if layers:
        kw["num_hidden_layers"] = min(layers, full_layers)
    config = AutoConfig.for_model(arch, **kw)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    del model
    return {
        "architecture": arch,
        "layers": kw["num_hidden_layers"],
        "full_layers": full_layers,
        "parameters": params,
        "parameters_full_depth": params + per_layer * (full_layers - kw["num_hidden_layers"]),
        "hidden_size": kw["hidden_size"],
    }


def write_data(path: Path, rows: int, words: int, seed: int = 0) -> Path:
    """Chat records of pseudo-random text, long enough to fill packed blocks; every other one with a rejected
    answer for DPO."""
    from tunefold.data.records import Message, make_record
    from tunefold.io import write_jsonl

    rng = random.Random(seed)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    records = [
        make_record(
            [Message(role="user", content=text(words // 4)), Message(role="assistant", content=text(words))],
            f"bench:{i}",
            rejected=text(words // 2),
        )
        for i in range(rows)
    ]
    write_jsonl(path, records)
    return path


def flops_per_token(info: dict[str, Any], seq: int) -> float:
    """LoRA training FLOPs per token: forward (2 per weight, plus causal attention 2 * layers * seq * hidden) and the
    backward's activation gradients (about the forward again); frozen weights need no weight gradients. The
    recompute of activation checkpointing is not counted (MFU counts model FLOPs only)."""
    forward = 2 * info["parameters"] + 2 * info["layers"] * seq * info["hidden_size"]
    return 2.0 * forward


def run_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tasks.dpo import train_dpo
    from tasks.sft import train_sft
    from tunefold.config import DPOSettings, LoraSettings, SFTRound, TrainConfig
    from tunefold.train.device import plan_device

    device = "cpu" if args.tiny else "cuda"
    base = work / name / "base"
    info = build_model(name, args.tokenizer, base, args.layers if name == "qwen7b" else None, device)
    seq, batch = (128, 2) if args.tiny else (args.seq, args.batch)
    data = write_data(work / name / "data.jsonl", rows=batch * args.steps * 2, words=seq // 2)
    lora = LoraSettings(r=16, alpha=32, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    rnd = SFTRound(data=str(data), init=str(base), learning_rate=1e-3, max_steps=args.steps)
    train = TrainConfig(
        lora=lora, max_length=seq, batch_size=batch, save_steps=10_000, device=device, rounds={"r1": rnd}
    )
    out: dict[str, Any] = {"model": info}

    before = reset_peak(device)
    sft = train_sft(train, "r1", base, work / name / "sft", work / name / "sft_ckpt", work / name / "sft.tsv")
    check_stage(sft, device)
    out["sft"] = summarize(sft, info, seq) | {"gpu_memory_before_gb": before}

    if device == "cuda" and args.qlora:
        before = reset_peak(device)
        q = train.model_copy(update={"qlora": True})
        qsft = train_sft(q, "r1", base, work / name / "qsft", work / name / "qsft_ckpt", work / name / "qsft.tsv")
        check_stage(qsft, device)
        out["qlora_sft"] = summarize(qsft, info, seq) | {"gpu_memory_before_gb": before}

    before = reset_peak(device)
    dpo_cfg = DPOSettings(init=str(work / name / "sft"), data=str(data), max_steps=args.steps, max_length=seq)
    dpo = train_dpo(dpo_cfg, train, base, work / name / "dpo", work / name / "dpo_ckpt", work / name / "dpo.tsv")
    check_stage(dpo, device, loss_key=None)
    # one base in memory (the reference is a frozen adapter; dpo_trainer refuses otherwise): compare with the weights
    keys = ("device", "dtype", "attention", "steps", "peak_gpu_memory_gb", "train_loss", "real_tokens_per_second")
    out["dpo"] = {k: dpo[k] for k in keys} | {"weights_gb": round(info["parameters"] * 2 / 2**30, 2)}
    out["dpo"]["gpu_memory_before_gb"] = before

    out["generation"] = generation_speed(base, work / name / "dpo", plan_device(device), args)
    return out


def reset_peak(device: str) -> float | None:
    """Free what the previous stage left (a trainer and its model form reference cycles) and restart the peak
    counter; returns the GiB still allocated, which the next stage's peak includes (0 when nothing leaked)."""
    import gc

    import torch

    gc.collect()
    if device != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return round(torch.cuda.memory_allocated() / 2**30, 3)


def check_stage(m: dict[str, Any], device: str, loss_key: str | None = "loss") -> None:
    """Where and how it ran, and a loss that is finite (and falling, for SFT)."""
    assert m["device"] == device, m
    assert m["dtype"] in (("bfloat16", "float16") if device == "cuda" else ("float32",)), m
    assert m["attention"] in ("sdpa", "flash_attention_2", "eager"), m
    assert math.isfinite(m["train_loss"]), m
    if loss_key:
        assert m[f"first_{loss_key}"] > m[f"last_{loss_key}"], m


def summarize(m: dict[str, Any], info: dict[str, Any], seq: int) -> dict[str, Any]:
    tps = m["real_tokens_per_second"] or 0.0
    flops = tps * flops_per_token(info, seq)
    return {
        **{k: m[k] for k in ("device", "dtype", "attention", "qlora", "gpu", "steps", "first_loss", "last_loss")},
        "peak_gpu_memory_gb": m["peak_gpu_memory_gb"],
        "real_tokens_per_second": tps,
        "tflops": float(f"{flops / 1e12:.4g}"),
        **{f"mfu_{k}": float(f"{flops / (v * 1e12):.4g}") for k, v in PEAK_TFLOPS.items()},
    }


def generation_speed(base: Path, adapter: Path, plan: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Tokens/s of the project's Generator on the plan's device, and on the CPU path for the same model; on the
    plan's device, greedy rows batched beside sampled ones must keep their greedy answers."""
    from tunefold.eval.generation import Generator, Prompt
    from tunefold.train.models import load_tokenizer, load_trained

    prompts = [Prompt([{"role": "user", "content": f"Tell me about {w}."}]) for w in WORDS[: args.gen_prompts]]

    def speed(device_plan: Any, n: int, new_tokens: int, mixed: bool = False) -> dict[str, Any]:
        model = load_trained(base, adapter, device_plan)
        gen = Generator(model, load_tokenizer(base), batch_size=n, max_new_tokens=new_tokens)
        start = time.perf_counter()
        greedy = gen.generate(prompts[:n])
        seconds = time.perf_counter() - start
        out = {
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "prompts": n,
            "tokens_per_second": round(gen.tokens_generated / seconds, 1),
        }
        if mixed:  # MT-Bench's batches: every other row sampled, in the same batch shape as the greedy run
            again = gen.generate(prompts[:n])
            hot = gen.generate([Prompt(p.messages, 0.7 if i % 2 else 0.0) for i, p in enumerate(prompts[:n])])
            repeat = sum(g.text == a.text for g, a in zip(greedy, again, strict=True))
            same = sum(g.text == h.text for g, h in zip(greedy[::2], hot[::2], strict=True))
            out["greedy_repeat_same"] = f"{repeat}/{n}"
            out["mixed_temperatures_greedy_rows_same"] = f"{same}/{len(greedy[::2])}"
            # where greedy decoding repeats itself to the token, sampled rows beside must not change it (on the
            # H200 in bf16 a 0.5B-shaped model's greedy answers differ run to run: then both counts are reported)
            if repeat == n:
                assert same == len(greedy[::2]), f"greedy rows beside sampled ones changed: {out}"
        return out

    out = {"plan": speed(plan, len(prompts), args.gen_tokens, mixed=True)}
    if plan.device == "cuda":
        out["cpu"] = speed(None, min(4, len(prompts)), 16)
        out["gpu_vs_cpu"] = round(out["plan"]["tokens_per_second"] / out["cpu"]["tokens_per_second"], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", type=Path, default=ROOT / "models/base", help="SmolLM2 tokenizer directory")
    p.add_argument("--models", default="smollm2,qwen0.5b,qwen7b", help="comma-separated: " + ", ".join(SPECS))
    p.add_argument("--layers", type=int, default=4, help="depth of the 7B-dims model (28 = full)")
    p.add_argument("--steps", type=int, default=10, help="training steps per stage")
    p.add_argument("--seq", type=int, default=1024, help="tokens per packed block")
    p.add_argument("--batch", type=int, default=4, help="packed blocks per step")
    p.add_argument("--no-qlora", dest="qlora", action="store_false", help="skip 4-bit QLoRA SFT")
    p.add_argument("--gen-prompts", type=int, default=16)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU (the test suite's check)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.tiny:
        args.models, args.steps, args.gen_prompts, args.gen_tokens = "tiny", 4, 2, 8
    import torch

    if not args.tiny and not torch.cuda.is_available():
        p.error("no CUDA device torch can use; --tiny runs the CPU check")
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if not args.tiny else None,
    }
    with tempfile.TemporaryDirectory(prefix="tunefold-gpu-bench-") as tmp:
        for name in args.models.split(","):
            start = time.perf_counter()
            result[name] = run_model(name, args, Path(tmp))
            result[name]["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
