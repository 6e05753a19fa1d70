"""Machinery shared by the SFT and DPO stages: base model + LoRA on the device plan, the training chat template,
length accounting, resume guards and loss curves. Heavy libraries are imported inside the functions."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunefold.config import LoraSettings, TrainConfig
from tunefold.errors import InputError
from tunefold.io import atomic_dir, write_json, write_text
from tunefold.train.device import DevicePlan, peak_memory_gb
from tunefold.train.launch import world_size

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# sha256 of a model family's own chat template -> the project's training version of it (same rendering, plus
# {% generation %} markers around each assistant answer and its end-of-turn token).
TRAINING_TEMPLATES = {
    "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788": "smollm2_training.jinja",
}


def schedule_args(
    cfg: TrainConfig,
    plan: DevicePlan,
    ckpt_dir: Path,
    batch_size: int,
    learning_rate: float,
    epochs: float,
    max_steps: int,
    heldout: bool = False,
    keep_best: bool = False,
) -> dict[str, Any]:
    """What SFT and DPO configs share: schedule (gradient accumulation, warmup), checkpoints every `save_steps`
    (the last two kept, and the best by held-out loss with `keep_best`), held-out evaluation every `eval_steps`
    when there is held-out data, seeds, device."""
    evaluation: dict[str, Any] = {"eval_strategy": "no"}
    if heldout:
        evaluation = {
            "eval_strategy": "steps",
            "eval_steps": cfg.eval_steps or cfg.save_steps,
            "per_device_eval_batch_size": batch_size,
        }
        if keep_best:
            best = {"load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": False}
            evaluation |= best
    return {
        **evaluation,
        "output_dir": str(ckpt_dir),
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": learning_rate,
        "warmup_steps": cfg.warmup,
        "num_train_epochs": epochs,
        "max_steps": max_steps,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": 2,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": "none",
        "ddp_find_unused_parameters": False,  # every LoRA weight is used
        **plan.trainer_args(),
    }


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TemplateChoice:
    """The chat template a stage renders with, where it came from, and how SFT masks the loss with it.

    `generation_markers`: trl masks each conversation by the template's {% generation %} spans (one sequence per
    conversation). `prompt_completion`: the template has none, so each assistant turn becomes its own
    prompt/completion sequence (tunefold.train.masking).
    """

    template: str
    source: str
    loss_mask: Literal["generation_markers", "prompt_completion"]

    def trainer_args(self) -> dict[str, bool]:
        """SFTConfig switches for this path: trl builds the labels from `assistant_masks` or `completion_mask`."""
        markers = self.loss_mask == "generation_markers"
        return {"assistant_only_loss": markers, "completion_only_loss": not markers}


def marked_template(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str] | None:
    """The model's template with {% generation %} markers: its own if it has them, tunefold's shipped training copy
    (keyed by the hash of the model's), or trl's; None when no marked version is known."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    own = model_template(tokenizer)
    if has_generation_markers(own):
        return own, "model"
    name = TRAINING_TEMPLATES.get(sha256_text(own))
    if name:
        return resources.files("tunefold.templates").joinpath(name).read_text(encoding="utf-8"), f"tunefold:{name}"
    try:
        patched = get_training_chat_template(tokenizer)
    except Exception:  # trl raises for families it does not know
        return None
    return (patched or own), "trl"


def model_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The base model's own chat template; without one there is no way to format conversations."""
    own = tokenizer.chat_template
    if not isinstance(own, str) or not own:
        raise InputError("the base model has no chat template; set train.chat_template to the path of one")
    return own


def choose_template(
    tokenizer: PreTrainedTokenizerBase, override: str | None = None, loss_mask: str = "auto"
) -> TemplateChoice:
    """The template and loss-mask path for `train.chat_template` and `train.loss_mask`.

    `auto` takes the marker path whenever a marked template exists (cheaper: one sequence per conversation) and
    falls back to per-turn prompt/completion sequences otherwise; `markers` refuses the fallback,
    `prompt_completion` forces it (with the model's own template, or the override).
    """
    from trl.chat_template_utils import has_generation_markers

    if override:
        path = Path(override)
        if not path.is_file():
            raise InputError(f"train.chat_template: {path} does not exist")
        template = path.read_text(encoding="utf-8")
        marked = has_generation_markers(template)
        if loss_mask == "markers" and not marked:
            raise InputError(
                f"train.chat_template: {path} has no {{% generation %}} markers, which train.loss_mask: markers "
                "needs; add them or set train.loss_mask: auto"
            )
        markers = marked and loss_mask != "prompt_completion"
        return TemplateChoice(template, str(path), "generation_markers" if markers else "prompt_completion")
    if loss_mask == "prompt_completion":
        return TemplateChoice(model_template(tokenizer), "model", "prompt_completion")
    found = marked_template(tokenizer)
    if found:
        return TemplateChoice(*found, "generation_markers")
    if loss_mask == "markers":
        raise InputError(
            "train.loss_mask is markers, but the base model's chat template has no {% generation %} markers and "
            "neither tunefold nor trl knows a training version of it; write one and set train.chat_template to its "
            "path, or set train.loss_mask: auto to train one prompt/completion sequence per assistant turn"
        )
    return TemplateChoice(model_template(tokenizer), "model", "prompt_completion")


def training_template(tokenizer: PreTrainedTokenizerBase, override: str | None = None) -> tuple[str, str]:
    """A chat template whose assistant turns are marked with {% generation %}, so only they carry loss.

    Returns (template, source). It renders exactly like the model's own template; the end-of-turn token sits
    inside the markers, so the model learns to stop.
    """
    choice = choose_template(tokenizer, override, "markers")
    return choice.template, choice.source


def load_base(model_dir: Path, plan: DevicePlan) -> PreTrainedModel:
    """The base model as the plan says: dtype, attention, and on CUDA optionally 4-bit with the compute and
    storage dtype of the plan (fp16 on GPUs without bf16; a storage dtype FSDP can shard)."""
    from transformers import AutoModelForCausalLM

    if not (model_dir / "config.json").exists():
        raise InputError(f"base model {model_dir} does not exist; run the prepare_model stage first")
    kwargs: dict[str, Any] = {"dtype": plan.torch_dtype, "attn_implementation": plan.attn_implementation}
    if plan.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=plan.torch_dtype,
            bnb_4bit_quant_storage=plan.torch_dtype,
        )
    if plan.device == "cuda":  # one full copy per process; under `accelerate launch` each rank takes its own GPU
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def lora_config(cfg: LoraSettings, model: PreTrainedModel) -> Any:
    """A peft LoraConfig, after checking that every target module exists in this model."""
    from peft import LoraConfig

    leaves = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if hasattr(mod, "weight")}
    missing = [t for t in cfg.target_modules if t not in leaves]
    if missing:
        linear = sorted(n for n in leaves if n.endswith("proj") or n in ("c_attn", "query_key_value", "fc1", "fc2"))
        raise InputError(
            f"train.lora.target_modules: {', '.join(missing)} not found in {type(model).__name__}; "
            f"its projection modules are: {', '.join(linear) or ', '.join(sorted(leaves))}"
        )
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )


def rendered_lengths(
    conversations: list[list[dict[str, str]]], tokenizer: PreTrainedTokenizerBase, template: str
) -> list[list[int]]:
    """Token count of each conversation rendered whole: its one training sequence on the marker path."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False, chat_template=template) for c in conversations]
    return [[len(ids)] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@dataclass
class Fit:
    """What `fit_lengths` keeps: (conversation, sequence) index pairs, the conversations rejected as overlong, and
    the counts for the stage's metrics."""

    keep: list[tuple[int, int]]
    rejected: list[int]
    stats: dict[str, int]


def fit_lengths(
    lengths: list[list[int]], max_length: int, overlong: str, loss_starts: list[list[int]] | None = None
) -> Fit:
    """Which training sequences to use, by length: a conversation with a sequence over `max_length` tokens is kept
    (trl truncates it; counted) or rejected, per `train.overlong`.

    `lengths[i]` are the token counts of conversation i's sequences: one on the marker path, one per assistant turn
    on the prompt/completion path, where the prompt is repeated in each, so `tokens` counts what the model really
    reads. `loss_starts[i]` (prompt/completion only) are the positions of each sequence's first loss token: a
    sequence whose answer starts at or past `max_length` would be cut to its prompt alone and teach nothing, so it
    is dropped (counted as `cut_to_prompt`).
    """
    over = [i for i, seqs in enumerate(lengths) if max(seqs, default=0) > max_length]
    rejected = over if overlong == "reject" else []
    starts = loss_starts or [[0] * len(seqs) for seqs in lengths]
    keep, cut, dropped = [], 0, set(rejected)
    for i, seqs in enumerate(lengths):
        if i in dropped:
            continue
        for j in range(len(seqs)):
            if starts[i][j] < max_length:
                keep.append((i, j))
            else:
                cut += 1
    stats = {
        "conversations": len(lengths),
        "sequences": len(keep),
        "over_max_length": len(over),
        "truncated": len(over) if overlong == "truncate" else 0,
        "rejected_overlong": len(rejected),
        "cut_to_prompt": cut,
        "tokens": sum(min(lengths[i][j], max_length) for i, j in keep),
    }
    return Fit(keep, rejected, stats)


def fingerprint(**parts: Any) -> str:
    return sha256_text(json.dumps(parts, sort_keys=True, default=str))[:16]


def is_main_process() -> bool:
    """Rank 0 (or no distributed launch): the one process that writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


class ResumeGuard:
    """Decides whether a checkpoint directory may be resumed: only by a run with the same data and params.

    A finished run's checkpoints are never resumed; an unfinished one with a different fingerprint is refused
    (it would silently mix two trainings) unless forced, which discards it.
    """

    FILE = "run.json"

    def __init__(self, ckpt_dir: Path, fp: str, force: bool, cpu: bool = True) -> None:
        self.dir, self.fp, self.force, self.cpu = ckpt_dir, fp, force, cpu

    def resume_point(self) -> str | None:
        """Under a distributed launch rank 0 decides first (it may remove a torn checkpoint or start over) and the
        other ranks then read what it left, so every rank resumes from the same step."""
        if world_size() == 1:
            return self._decide()
        from accelerate import PartialState

        with PartialState(cpu=self.cpu).main_process_first():
            return self._decide()

    def _decide(self) -> str | None:
        state_file = self.dir / self.FILE
        state = json.loads(state_file.read_text()) if state_file.exists() else None
        last = self._last_complete_checkpoint()
        if last and state and not state.get("completed"):
            if state["fingerprint"] == self.fp:
                log.info("resuming from %s", last)
                return last
            if not self.force:
                raise InputError(
                    f"{self.dir} holds an unfinished run with different data or training params "
                    f"(fingerprint {state['fingerprint']}, now {self.fp}); resuming would mix two trainings. "
                    "Re-run with TUNEFOLD_FORCE_RESTART=1 to discard it and start over."
                )
            log.warning("discarding unfinished checkpoints in %s (forced restart)", self.dir)
        if is_main_process():  # other ranks of a distributed launch only read
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True)
            write_json(state_file, {"fingerprint": self.fp, "completed": False})
        return None

    def _last_complete_checkpoint(self) -> str | None:
        """The newest checkpoint the Trainer finished saving: its trainer_state.json, written last, parses. A kill
        while saving leaves a newer torn one, which would fail the resume; it is removed (it is redone)."""
        found = sorted(
            (int(m.group(1)), p)
            for p in self.dir.glob("checkpoint-*")
            if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir()
        )
        for _, path in reversed(found):
            try:
                json.loads((path / "trainer_state.json").read_text())
                return str(path)
            except (OSError, ValueError):
                log.warning("%s was not finished when its run stopped; resuming from an earlier one", path.name)
                if is_main_process():
                    shutil.rmtree(path, ignore_errors=True)
        return None

    def complete(self) -> None:
        write_json(self.dir / self.FILE, {"fingerprint": self.fp, "completed": True})


CURVE_KEYS = ("loss", "learning_rate", "grad_norm", "rewards/margins", "rewards/accuracies", "num_tokens")
HELDOUT_KEYS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins")


def write_curve(
    log_history: list[dict[str, Any]], path: Path, keys: tuple[str, ...] = CURVE_KEYS, marker: str = "loss"
) -> list[dict[str, Any]]:
    """A curve as TSV for `dvc plots`: one row per logged step that has `marker` (the history survives a resume)."""
    rows = [
        {"step": e["step"], **{k: e[k] for k in keys if k in e}} for e in log_history if marker in e and "step" in e
    ]
    cols = ["step", *[k for k in keys if any(k in r for r in rows)]]
    lines = ["\t".join(c.replace("/", "_") for c in cols)]
    lines += ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]
    write_text(path, "\n".join(lines) + "\n")
    return rows


def evaluate_start(trainer: Any, ckpt_dir: Path, resume: str | None) -> dict[str, float]:
    """The starting model's held-out metrics. Kept beside the checkpoints, so a resumed run reports the same
    starting point rather than measuring a half-trained model."""
    path = ckpt_dir / "heldout_start.json"
    if resume and path.exists():
        return json.loads(path.read_text())
    metrics = trainer.evaluate()
    if is_main_process():
        write_json(path, metrics)
    return metrics


def heldout_numbers(m: dict[str, float], perplexity: bool) -> dict[str, float]:
    """trl/transformers' eval_* metrics under plain names; perplexity = exp(loss) for a language-model loss."""
    out = {"loss": round(m["eval_loss"], 4)}
    if perplexity:
        out["perplexity"] = round(math.exp(min(m["eval_loss"], 50.0)), 3)
    for key, name in (("eval_rewards/accuracies", "reward_accuracy"), ("eval_rewards/margins", "reward_margin")):
        if key in m:
            out[name] = round(m[key], 4)
    return out


def train_and_save(
    trainer: Any,
    tokenizer: Any,
    guard: ResumeGuard,
    resume: str | None,
    out_dir: Path,
    curve_path: Path,
    write_extra: Callable[[Path], None] | None = None,
    heldout: Heldout | None = None,
) -> dict[str, Any] | None:
    """Train (from `resume` if set); with `heldout`, evaluate the model training ends with (the best checkpoint
    when the trainer loads it) on every rank. Then, on the main process only, write the adapter, tokenizer and
    `write_extra` files atomically, mark the run finished and write the curves. Returns the metrics SFT and DPO
    share (None on other ranks)."""
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    history = list(trainer.state.log_history)  # before the final evaluation adds its own entry
    end = trainer.evaluate() if heldout else None
    tokens = max((e.get("num_tokens", 0) for e in trainer.state.log_history), default=0)
    if not is_main_process():
        return None
    model = trainer.model
    adapters = getattr(model, "peft_config", {})
    with atomic_dir(out_dir) as tmp:  # the trained adapter only, not DPO's frozen reference copy
        model.save_pretrained(tmp, **({"selected_adapters": [model.active_adapter]} if len(adapters) > 1 else {}))
        tokenizer.save_pretrained(tmp)
        if write_extra:
            write_extra(tmp)
    guard.complete()
    metrics = {
        "steps": trainer.state.global_step,
        "processes": world_size(),  # data-parallel ranks
        "resumed_from_step": int(Path(resume).name.split("-")[-1]) if resume else 0,
        "train_loss": round(result.training_loss, 4),
        "seconds_training": round(seconds, 1),
        "real_tokens": int(tokens),  # unpadded tokens trained on, all ranks (trl's num_tokens)
        "real_tokens_per_second": round(tokens / seconds, 1) if seconds and not resume else None,
        "peak_gpu_memory_gb": peak_memory_gb(),
        "curve": write_curve(history, curve_path),
    }
    if heldout and end is not None:
        metrics["heldout"] = heldout.summary(history, trainer.state.best_model_checkpoint, end)
    return metrics


def start_heldout(
    trainer: Any,
    ckpt_dir: Path,
    resume: str | None,
    curve_path: Path | None,
    items: int,
    data_sha256: str,
    perplexity: bool,
) -> Heldout | None:
    """The held-out side of a run, its starting model measured (`evaluate_start`) when the trainer has held-out
    data. Without any, the curve is written as its header alone, so the declared output exists and reads empty."""
    if curve_path is None:
        return None
    if trainer.eval_dataset is None:
        write_curve([], curve_path, HELDOUT_KEYS, "eval_loss")
        return None
    return Heldout(items, data_sha256, evaluate_start(trainer, ckpt_dir, resume), curve_path, perplexity)


@dataclass
class Heldout:
    """The held-out side of a training stage: how many items, the starting model's metrics, where the curve goes."""

    items: int
    data_sha256: str  # what was held out: the gate compares two models only on the same held-out data
    start: dict[str, float]
    curve_path: Path
    perplexity: bool  # a language-model loss (SFT), not DPO's

    def summary(self, history: list[dict[str, Any]], best: str | None, end: dict[str, float]) -> dict[str, Any]:
        """Start, the last step's and the kept model's held-out numbers, and which checkpoint was kept."""
        rows = write_curve([{"step": 0, **self.start}, *history], self.curve_path, HELDOUT_KEYS, "eval_loss")
        last = next((e for e in reversed(history) if "eval_loss" in e), end)
        worse = end["eval_loss"] > self.start["eval_loss"]
        if worse:
            log.warning(
                "the trained model's held-out loss %.4f is above the starting model's %.4f: training made it worse "
                "on data it did not see",
                end["eval_loss"],
                self.start["eval_loss"],
            )
        return {
            "items": self.items,
            "data_sha256": self.data_sha256,
            "start": heldout_numbers(self.start, self.perplexity),
            "last": heldout_numbers(last, self.perplexity),
            "kept": heldout_numbers(end, self.perplexity),
            "kept_checkpoint": Path(best).name if best else "last step",
            "evaluations": len(rows),
            "worse_than_start": worse,
        }
