"""Stage `sft@<round>`: LoRA supervised fine-tuning of one curriculum round with trl's SFTTrainer.

Loss falls on assistant tokens only, end-of-turn token included: by the chat template's {% generation %} spans
when a marked template exists, else by one prompt/completion sequence per assistant turn (`train.loss_mask`);
sequences are packed into blocks with no padding. A round continues from the previous round's adapter.
Checkpoints every `train.save_steps` steps make a killed run resume where it stopped. With held-out conversations
(--val, the `holdout` stage's), the round is evaluated on them at the start, every `train.eval_steps` and at the end
(loss and perplexity, a `dvc plots` curve), and with `train.keep: best` the adapter written is the checkpoint with
the lowest held-out loss.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefold.config import TrainConfig
from tunefold.data.records import read_records
from tunefold.data.subsets import unique_conversations, without_heldout
from tunefold.errors import InputError
from tunefold.io import write_jsonl
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.train.device import plan_device, train_processes
from tunefold.train.masking import prompt_completion_examples
from tunefold.train.models import load_tokenizer
from tunefold.train.training import (
    Fit,
    ResumeGuard,
    TemplateChoice,
    choose_template,
    file_hash,
    fingerprint,
    fit_lengths,
    load_base,
    lora_config,
    rendered_lengths,
    schedule_args,
    sha256_text,
    start_heldout,
    train_and_save,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").exists()


def sft_rows(
    cfg: TrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    names: list[str] | None = None,
) -> tuple[list[dict[str, Any]], TemplateChoice, Fit]:
    """The training rows in the form trl takes for the chosen loss-mask path, after the length policy: whole
    conversations (`messages`) on the marker path, pre-tokenized per-turn `input_ids`/`completion_mask` otherwise.
    The trainer's tokenizer must carry `choice.template` (trl masks by its markers; it is saved with the adapter)."""
    choice = choose_template(tokenizer, cfg.chat_template, cfg.loss_mask)
    if choice.loss_mask == "generation_markers":
        fit = fit_lengths(rendered_lengths(conversations, tokenizer, choice.template), cfg.max_length, cfg.overlong)
        return [{"messages": conversations[i]} for i, _ in fit.keep], choice, fit
    examples = prompt_completion_examples(conversations, tokenizer, choice.template, names)
    lengths = [[len(e["input_ids"]) for e in seqs] for seqs in examples]
    starts = [[e["completion_mask"].index(1) for e in seqs] for seqs in examples]
    fit = fit_lengths(lengths, cfg.max_length, cfg.overlong, starts)
    return [examples[i][j] for i, j in fit.keep], choice, fit


def train_sft(
    cfg: TrainConfig,
    round_name: str,
    base_dir: Path,
    out_dir: Path,
    ckpt_dir: Path,
    curve_path: Path,
    val_path: Path | None = None,
    heldout_curve: Path | None = None,
    force_restart: bool = False,
) -> dict[str, Any]:
    from datasets import Dataset
    from peft import PeftModel
    from trl import SFTConfig, SFTTrainer

    if round_name not in cfg.rounds:
        raise InputError(f"train.rounds has no round {round_name!r}; rounds: {', '.join(cfg.rounds)}")
    rnd = cfg.rounds[round_name]
    init = Path(rnd.init)
    if not is_adapter(init) and init.resolve() != base_dir.resolve():
        raise InputError(f"train.rounds.{round_name}.init: {init} is neither {base_dir} nor a LoRA adapter directory")
    plan = plan_device(cfg.device, cfg.qlora, cfg.attn_implementation)
    tokenizer = load_tokenizer(base_dir)

    val = read_records(val_path, allow_empty=True) if val_path else []
    records, held = without_heldout(read_records(Path(rnd.data), purpose="train on"), val)
    for r in held:
        log.warning("%s: record %s not trained on: its prompt is held out (%s)", rnd.data, r.id, val_path)
    if not records:
        raise InputError(f"{rnd.data}: every record's prompt is held out in {val_path}; nothing to train on")
    conversations = [[m.model_dump() for m in r.messages] for r in records]
    rows, choice, fit = sft_rows(cfg, tokenizer, conversations, [f"{rnd.data}: record {r.id}" for r in records])
    tokenizer.chat_template = choice.template
    dropped = [
        records[i].model_dump() | {"reason": f"over train.max_length={cfg.max_length} tokens"} for i in fit.rejected
    ]
    dropped += [r.model_dump() | {"reason": f"its prompt is held out in {val_path}"} for r in held]
    if not rows:
        raise InputError(f"{rnd.data}: no conversation fits train.max_length={cfg.max_length}; nothing to train on")
    dataset = Dataset.from_list(rows)
    val_rows, _, val_fit = sft_rows(cfg, tokenizer, unique_conversations(val)) if val else ([], choice, None)
    val_items = len({i for i, _ in val_fit.keep}) if val_fit else 0  # conversations evaluated
    eval_dataset = Dataset.from_list(val_rows) if val_rows else None

    fp = fingerprint(
        data=file_hash(Path(rnd.data)),
        val=file_hash(val_path) if val else None,
        init=file_hash(init / "adapter_model.safetensors") if is_adapter(init) else str(init),
        train=cfg.model_dump(exclude={"rounds", "device"}),
        round=rnd.model_dump(),
    )
    guard = ResumeGuard(ckpt_dir, fp, force_restart, cpu=plan.device == "cpu")
    resume = guard.resume_point()

    model = load_base(base_dir, plan)
    peft_config = None
    if is_adapter(init):
        model = PeftModel.from_pretrained(model, str(init), is_trainable=True)
    else:
        peft_config = lora_config(cfg.lora, model)
    args = SFTConfig(
        **schedule_args(
            cfg,
            plan,
            ckpt_dir,
            cfg.batch_size,
            rnd.learning_rate,
            rnd.epochs,
            rnd.max_steps,
            heldout=eval_dataset is not None,
            keep_best=cfg.keep == "best",
        ),
        max_length=cfg.max_length,
        packing=cfg.packing,
        **choice.trainer_args(),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    val_hash = file_hash(val_path)[:16] if val_path and val else ""
    heldout = start_heldout(trainer, ckpt_dir, resume, heldout_curve, val_items, val_hash, perplexity=True)
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
    trainable, total = trainer.model.get_nb_trainable_parameters()
    metrics = {
        "round": round_name,
        "data": str(rnd.data),
        "data_sha256": file_hash(Path(rnd.data))[:16],
        "init": str(rnd.init),
        **plan.describe(),
        **done,
        "first_loss": curve[0]["loss"] if curve else None,
        "last_loss": curve[-1]["loss"] if curve else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "chat_template": choice.source,
        "chat_template_sha256": sha256_text(choice.template)[:16],
        "loss_mask": choice.loss_mask,
        "packing": cfg.packing,
        **fit.stats,
        "dropped_heldout_prompts": len(held),
        "keep": cfg.keep if heldout else "last (no held-out data)",
    }
    if "heldout" not in metrics:
        metrics["heldout"] = {"items": 0, "note": "no held-out conversations: this round was not validated"}
    log.info(
        "sft %s: %d steps, loss %s -> %s, %s real tokens/s",
        round_name,
        metrics["steps"],
        metrics["first_loss"],
        metrics["last_loss"],
        metrics["real_tokens_per_second"],
    )
    if heldout:
        h = metrics["heldout"]
        log.info(
            "sft %s held-out loss on %d conversations: %s at the start, %s kept (%s)",
            round_name,
            h["items"],
            h["start"]["loss"],
            h["kept"]["loss"],
            h["kept_checkpoint"],
        )
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--round", required=True, help="round name, a key of train.rounds")
    p.add_argument("--base", type=Path, required=True, help="base model directory (prepare_model)")
    p.add_argument("--out", type=Path, required=True, help="adapter directory to write")
    p.add_argument("--checkpoints", type=Path, required=True, help="checkpoint directory (kept for resume)")
    p.add_argument("--curve", type=Path, required=True, help="loss curve TSV (dvc plots)")
    p.add_argument("--val", type=Path, help="held-out records (the holdout stage's val.jsonl; empty: no validation)")
    p.add_argument("--heldout-curve", type=Path, help="held-out loss curve TSV (dvc plots)")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    if ctx.params.train is None:
        raise InputError("params.yaml has no `train` section")
    force = os.environ.get("TUNEFOLD_FORCE_RESTART") == "1"
    return train_sft(
        ctx.params.train,
        args.round,
        args.base,
        args.out,
        args.checkpoints,
        args.curve,
        args.val,
        args.heldout_curve,
        force,
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("sft", __doc__ or "", _args, _run, argv, processes=train_processes)


if __name__ == "__main__":
    sys.exit(main())
