"""`eval.backend: vllm`: local models answer from one offline vLLM engine on models/base.

One engine serves every local model of the stage: the baseline is the base itself, and a candidate's adapter is
applied per request as a LoRA (`enable_lora`). So there is never a second engine in the process (two engines
compete for the same GPU memory, and vLLM does not reliably free the first one), and no merged copy of the base
is written to disk.

A stacked adapter (its stack.json lists adapters that were merged into the base before it was trained, as DPO's
does) is served as one LoRA that equals the whole stack. Merging adds each adapter's scaled B·A to the weights,
and [s1·B1 | s2·B2] · [A1; A2] is that same sum, with rank r1 + r2. This works for plain LoRA on linear layers
only: DoRA, modules_to_save, bias training and per-module rank or alpha patterns are refused with the reason.

vllm is an optional dependency that needs CUDA. It is imported only inside the functions that use it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefold.errors import InputError
from tunefold.train.models import adapter_stack

if TYPE_CHECKING:
    from tunefold.config import EvalConfig
    from tunefold.eval.generation import Answerer

log = logging.getLogger(__name__)

# LoRAConfig.max_lora_rank must be one of these (vLLM 0.8+; older releases stop at 64 or 256)
MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
_A, _B = ".lora_A.weight", ".lora_B.weight"


def require_vllm() -> None:
    """Fail before any work when vLLM is asked for but not installed, instead of after the first model's answers."""
    if importlib.util.find_spec("vllm") is None:
        raise InputError(
            "eval.backend is 'vllm' but the vllm package is not installed: install it on the CUDA machine that "
            "generates (`pip install vllm`), or set eval.backend: hf"
        )


def sampling_settings(
    temperatures: list[float], max_tokens: int, stop_ids: list[int], seed: int
) -> list[dict[str, Any]]:
    """vLLM SamplingParams arguments for each conversation. Each gets its MT-Bench temperature (0 means greedy),
    the stage's max_new_tokens and every end-of-turn id of the model. Sampled requests carry a seed, so the
    answer does not depend on which other requests share its batch."""
    return [
        {
            "temperature": t,
            "max_tokens": max_tokens,
            "stop_token_ids": list(stop_ids),
            "seed": seed if t > 0 else None,
            "skip_special_tokens": True,
        }
        for t in temperatures
    ]


def model_stop_ids(model_dir: Path, tokenizer_eos: int | None) -> list[int]:
    """The tokenizer's eos plus the eos ids in the model's generation_config.json. vLLM gets these ids
    explicitly, so it stops at the same tokens as the transformers backend does."""
    from tunefold.eval.generation import end_of_turn_ids

    path = model_dir / "generation_config.json"
    configured = json.loads(path.read_text()).get("eos_token_id") if path.exists() else None
    return end_of_turn_ids(tokenizer_eos, configured)


def max_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank that vLLM accepts and that still fits `rank`."""
    fits = [r for r in MAX_LORA_RANKS if r >= rank]
    if not fits:
        raise InputError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank ({MAX_LORA_RANKS[-1]})")
    return fits[0]


def _scale(cfg: dict[str, Any], path: Path) -> float:
    """What peft multiplies B·A by on merging. Raises for adapter kinds whose merge is not a sum of B·A."""
    unsupported = {
        "use_dora": "DoRA",
        "modules_to_save": "modules_to_save",
        "rank_pattern": "a per-module rank_pattern",
        "alpha_pattern": "a per-module alpha_pattern",
        "fan_in_fan_out": "fan_in_fan_out",
    }
    found = [what for key, what in unsupported.items() if cfg.get(key)]
    if cfg.get("bias", "none") != "none":
        found.append(f"bias {cfg['bias']!r}")
    if found:
        raise InputError(
            f"{path}: {', '.join(found)} cannot be served as one stacked LoRA with eval.backend vllm; "
            "use eval.backend: hf"
        )
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def combine_stack(adapters: list[Path], out_dir: Path) -> int:
    """Write one LoRA adapter to `out_dir` that equals merging `adapters` in order. Each adapter's scale is
    folded into its B, and modules that an adapter lacks get zero blocks. Returns the combined rank."""
    import torch
    from safetensors.torch import load_file, save_file

    parts: list[tuple[dict[str, Any], float, int, dict[str, dict[str, torch.Tensor]]]] = []
    for path in adapters:
        cfg = json.loads((path / "adapter_config.json").read_text())
        scale = _scale(cfg, path)
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in load_file(str(path / "adapter_model.safetensors")).items():
            if not key.endswith((_A, _B)):
                raise InputError(f"{path}: {key} is not a LoRA A/B weight of a linear layer; use eval.backend: hf")
            modules.setdefault(key[: -len(_A)], {})[key[-len(_A) :]] = tensor.float()
        parts.append((cfg, scale, int(cfg["r"]), modules))
    out: dict[str, torch.Tensor] = {}
    for name in sorted({n for *_, modules in parts for n in modules}):
        present = [m[name] for *_, m in parts if name in m]
        fan_in, fan_out = present[0][_A].shape[1], present[0][_B].shape[0]
        a_blocks, b_blocks = [], []
        for _, scale, r, modules in parts:
            if name in modules:
                a_blocks.append(modules[name][_A])
                b_blocks.append(modules[name][_B] * scale)
            else:
                a_blocks.append(torch.zeros(r, fan_in))
                b_blocks.append(torch.zeros(fan_out, r))
        out[name + _A] = torch.cat(a_blocks, dim=0).contiguous()
        out[name + _B] = torch.cat(b_blocks, dim=1).contiguous()
    rank = sum(r for _, _, r, _ in parts)
    targets = sorted({n.rsplit(".", 1)[-1] for n in (k[: -len(_A)] for k in out if k.endswith(_A))})
    config = parts[-1][0] | {
        "r": rank,
        "lora_alpha": rank,  # scale 1: the adapters' own scales are folded into B
        "use_rslora": False,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,  # the zero blocks stand for layers an adapter left out
        "layers_pattern": None,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return rank


def _lora_rank(adapter: Path) -> int:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    _scale(cfg, adapter)  # the same limits as for a stack: vLLM serves plain LoRA
    return int(cfg["r"])


class VllmEngine:
    """One offline vLLM engine on the base model for every local model of the stage (see the module doc)."""

    def __init__(self, base_dir: Path, cfg: EvalConfig, adapters: list[str | None]) -> None:
        require_vllm()
        self.cfg = cfg
        self._tmp = Path(tempfile.mkdtemp(prefix="tunefold-vllm-"))  # combined stacks live here
        self.loras: dict[str, tuple[Path, int]] = {}  # adapter setting -> (directory vLLM loads, rank)
        try:
            self._start(base_dir, adapters)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def _start(self, base_dir: Path, adapters: list[str | None]) -> None:
        from vllm import LLM

        from tunefold.train.device import plan_device

        for adapter in dict.fromkeys(a for a in adapters if a):
            stack = adapter_stack(adapter)
            if len(stack) == 1:
                self.loras[adapter] = (stack[0], _lora_rank(stack[0]))
            else:
                combined = self._tmp / f"lora{len(self.loras) + 1}"
                self.loras[adapter] = (combined, combine_stack(stack, combined))
                log.info("vllm: %s and the %d adapters under it served as one LoRA", adapter, len(stack) - 1)
        lora: dict[str, Any] = {}
        if self.loras:
            rank = max(r for _, r in self.loras.values())
            lora = {"enable_lora": True, "max_lora_rank": max_lora_rank(rank), "max_loras": len(self.loras)}
        plan = plan_device(self.cfg.device)
        self.llm = LLM(model=str(base_dir), dtype=plan.dtype, seed=self.cfg.seed, **lora)
        tokenizer = self.llm.get_tokenizer()
        self.stop_ids = model_stop_ids(base_dir, tokenizer.eos_token_id)
        # the base's template for every model, as the transformers backend does (an adapter directory may carry
        # the training template, which vLLM would otherwise pick up from it)
        self.chat_template = tokenizer.chat_template

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def answerer(self, adapter: str | None) -> Answerer:
        """Answers of the base (no adapter) or of base + `adapter`, as `answer_items` calls them."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        request = None
        if adapter:
            path, _ = self.loras[adapter]
            n = list(self.loras).index(adapter) + 1
            request = LoRARequest(f"adapter{n}", n, str(path))

        def answer(convs: list[list[dict[str, str]]], temps: list[float]) -> list[tuple[str, int, bool]]:
            settings = sampling_settings(temps, self.cfg.max_new_tokens, self.stop_ids, self.cfg.seed)
            outs = self.llm.chat(
                convs,
                [SamplingParams(**s) for s in settings],
                use_tqdm=False,
                lora_request=request,
                chat_template=self.chat_template,
            )
            return [
                (o.outputs[0].text.strip(), len(o.outputs[0].token_ids), o.outputs[0].finish_reason == "stop")
                for o in outs
            ]

        return answer
