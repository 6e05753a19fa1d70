"""Stage `dpo`: Direct Preference Optimisation with trl's DPOTrainer on prompt/chosen/rejected pairs.

The SFT adapter is loaded twice onto one base model: as the trainable policy and as a frozen "ref" adapter
(trl's reference adapter), so the reference is exactly the SFT model and only one base is in memory. Nothing is
merged, so a 4-bit QLoRA base keeps the whole SFT delta (merging into 4-bit weights would round most of it
away). With `dpo.init` set to the base model (the DPO paper's setting) a fresh LoRA adapter is trained and the
reference is the base with the adapter disabled. `dpo.sources` and `dpo.data_fraction` choose the preference
pool, so a data-efficiency study is one `dvc exp run` sweep.
With held-out pairs (--val: the preference pairs of the `holdout` stage's held-out side), trl's own eval
metrics (loss, reward accuracy, reward margin) are measured before training, every `train.eval_steps` and after.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tunefold.config import DPOSettings, TrainConfig
from tunefold.data.records import Record, read_records
from tunefold.data.subsets import nested_fraction, without_heldout
from tunefold.errors import InputError
from tunefold.io import write_jsonl
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.train.device import DevicePlan, plan_device, train_processes
from tunefold.train.models import load_tokenizer
from tunefold.train.training import (
    ResumeGuard,
    choose_template,
    file_hash,
    fingerprint,
    load_base,
    lora_config,
    schedule_args,
    start_heldout,
    train_and_save,
)


def held_out_pairs(records: list[Record], cfg: DPOSettings) -> list[Record]:
    """Every held-out preference pair (of `dpo.sources` when set): the same set at every data fraction."""
    return [r for r in records if r.rejected is not None and (not cfg.sources or r.source_name in cfg.sources)]


def select_pairs(records: list[Record], cfg: DPOSettings, seed: int) -> tuple[list[Record], dict[str, int]]:
    """Pairs from the chosen sources, then `data_fraction` of each source's pairs, nested across fractions
    (`tunefold.data.subsets`): a sweep's smaller subsets lie inside its larger ones, each source keeps its share."""
    pairs = [r for r in records if r.rejected is not None]
    if cfg.sources:
        known = sorted({r.source_name for r in pairs})
        unknown = sorted(set(cfg.sources) - set(known))
        if unknown:
            raise InputError(f"dpo.sources: no preference pairs from {', '.join(unknown)}; pairs come from {known}")
        pairs = [r for r in pairs if r.source_name in cfg.sources]
    if not pairs:
        raise InputError(f"{cfg.data}: no preference pairs (rows with `rejected`); nothing for DPO to learn from")
    picked = [pairs[i] for i in nested_fraction(pairs, lambda r: r.source_name, cfg.data_fraction, seed)]
    return picked, dict(Counter(r.source_name for r in picked))


def pairs_hash(pairs: list[Record]) -> str:
    h = hashlib.sha256()
    for r in pairs:
        h.update(r.model_dump_json().encode() + b"\n")
    return h.hexdigest()[:16]


def preference_dataset(pairs: list[Record]) -> Any:
    """trl's conversational preference format: the conversation so far, then the two answers."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": [m.model_dump() for m in r.prompt],
                "chosen": [{"role": "assistant", "content": r.response}],
                "rejected": [{"role": "assistant", "content": r.rejected}],
            }
            for r in pairs
        ]
    )


def dpo_trainer(
    cfg: DPOSettings,
    train: TrainConfig,
    plan: DevicePlan,
    base_dir: Path,
    ckpt_dir: Path,
    dataset: Any,
    tokenizer: Any,
    eval_dataset: Any = None,
) -> Any:
    """A DPOTrainer whose policy starts from `dpo.init` and whose reference is that same starting model, frozen.

    From an SFT adapter: the adapter is trainable and trl adds a frozen copy of it ("ref"). From the base model
    (`dpo.init` = the base directory, the DPO paper's setting): a fresh LoRA adapter is trained and the reference is
    the base with the adapter disabled."""
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    from_base = starts_from_base(cfg, base_dir)
    model = load_base(base_dir, plan)
    peft_config = lora_config(train.lora, model) if from_base else None
    if not from_base:
        model = PeftModel.from_pretrained(model, cfg.init, is_trainable=True)
    args = DPOConfig(
        **schedule_args(
            train,
            plan,
            ckpt_dir,
            cfg.batch_size,
            cfg.learning_rate,
            cfg.epochs,
            cfg.max_steps,
            heldout=eval_dataset is not None,
        ),
        beta=cfg.beta,
        max_length=cfg.max_length,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if not from_base and "ref" not in trainer.model.peft_config:  # trl would fall back to the base as reference
        raise RuntimeError("trl did not add the frozen reference adapter; DPO would train against the base model")
    return trainer


def starts_from_base(cfg: DPOSettings, base_dir: Path) -> bool:
    """True for `dpo.init` = the base model directory; an error unless it is that or a LoRA adapter directory."""
    init = Path(cfg.init)
    if init.resolve() == base_dir.resolve():
        return True
    if not (init / "adapter_config.json").exists():
        raise InputError(
            f"dpo.init: {init} is neither the base model ({base_dir}) nor a LoRA adapter directory; "
            "run the SFT stage first or set dpo.init to the base model"
        )
    return False


def train_dpo(
    cfg: DPOSettings,
    train: TrainConfig,
    base_dir: Path,
    out_dir: Path,
    ckpt_dir: Path,
    curve_path: Path,
    val_path: Path | None = None,
    heldout_curve: Path | None = None,
    force_restart: bool = False,
) -> dict[str, Any]:
    init = Path(cfg.init)
    from_base = starts_from_base(cfg, base_dir)
    plan = plan_device(train.device, train.qlora, train.attn_implementation)
    tokenizer = load_tokenizer(base_dir)
    # renders like the SFT rounds' template; DPO masks by prompt/chosen/rejected itself, so markers are not needed
    tokenizer.chat_template = choose_template(tokenizer, train.chat_template).template
    heldout_records = read_records(val_path, allow_empty=True) if val_path else []
    records, held = without_heldout(read_records(Path(cfg.data), purpose="train on"), heldout_records)
    for r in held:
        log.warning("%s: pair %s not trained on: its prompt is held out (%s)", cfg.data, r.id, val_path)
    pairs, by_source = select_pairs(records, cfg, train.seed)
    dataset = preference_dataset(pairs)
    val = held_out_pairs(heldout_records, cfg)

    fp = fingerprint(
        data=file_hash(Path(cfg.data)),
        pairs=pairs_hash(pairs),  # what is trained on after the held-out prompts are dropped
        val=pairs_hash(val),
        init="base" if from_base else file_hash(init / "adapter_model.safetensors"),
        dpo=cfg.model_dump(),
        lora=train.lora.model_dump(),
        seed=train.seed,
    )
    guard = ResumeGuard(ckpt_dir, fp, force_restart, cpu=plan.device == "cpu")
    resume = guard.resume_point()

    eval_dataset = preference_dataset(val) if val else None
    trainer = dpo_trainer(cfg, train, plan, base_dir, ckpt_dir, dataset, tokenizer, eval_dataset)
    heldout = start_heldout(trainer, ckpt_dir, resume, heldout_curve, len(val), pairs_hash(val), perplexity=False)
    dropped = [r.model_dump() | {"reason": f"its prompt is held out in {val_path}"} for r in held]
    done = train_and_save(
        trainer,
        tokenizer,
        guard,
        resume,
        out_dir,
        curve_path,
        lambda tmp: write_jsonl(tmp / "rejected.jsonl", dropped),
        heldout,
    )
    if done is None:
        return {}
    curve = done.pop("curve")
    margins = [r["rewards/margins"] for r in curve if "rewards/margins" in r]
    metrics = {
        **plan.describe(),
        "pairs": len(pairs),
        "pairs_by_source": by_source,
        "dropped_heldout_prompts": len(held),
        "data_fraction": cfg.data_fraction,
        "data_sha256": file_hash(Path(cfg.data))[:16],
        "pairs_sha256": pairs_hash(pairs),  # the exact subset trained on, for lineage
        "init": cfg.init,
        "reference": "the base model" if from_base else f"the frozen starting adapter {cfg.init}",
        **done,
        "first_reward_margin": margins[0] if margins else None,
        "last_reward_margin": margins[-1] if margins else None,
        "heldout": done.get("heldout", {"items": 0, "note": "no held-out preference pairs: DPO was not validated"}),
    }
    log.info(
        "dpo: %d pairs, %d steps, reward margin %s -> %s",
        len(pairs),
        metrics["steps"],
        metrics["first_reward_margin"],
        metrics["last_reward_margin"],
    )
    if heldout:
        h = metrics["heldout"]
        log.info(
            "dpo held-out on %d pairs: reward accuracy %s -> %s, margin %s -> %s",
            h["items"],
            h["start"].get("reward_accuracy"),
            h["kept"].get("reward_accuracy"),
            h["start"].get("reward_margin"),
            h["kept"].get("reward_margin"),
        )
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=Path, required=True, help="base model directory (prepare_model)")
    p.add_argument("--out", type=Path, required=True, help="adapter directory to write")
    p.add_argument("--checkpoints", type=Path, required=True, help="checkpoint directory (kept for resume)")
    p.add_argument("--curve", type=Path, required=True, help="loss and reward-margin curve TSV (dvc plots)")
    p.add_argument("--val", type=Path, help="held-out records; their preference pairs are DPO's validation set")
    p.add_argument("--heldout-curve", type=Path, help="held-out loss/reward curve TSV (dvc plots)")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    if ctx.params.dpo is None or ctx.params.train is None:
        raise InputError("params.yaml needs `train` and `dpo` sections for the dpo stage")
    force = os.environ.get("TUNEFOLD_FORCE_RESTART") == "1"
    return train_dpo(
        ctx.params.dpo,
        ctx.params.train,
        args.base,
        args.out,
        args.checkpoints,
        args.curve,
        args.val,
        args.heldout_curve,
        force,
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("dpo", __doc__ or "", _args, _run, argv, processes=train_processes)


if __name__ == "__main__":
    sys.exit(main())
