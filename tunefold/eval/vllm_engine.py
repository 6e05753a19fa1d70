"""`eval.backend: vllm`: local models answer from one offline vLLM engine on models/base.

One engine serves every local model of the stage: the baseline is the base itself, and a candidate's adapter is
applied per request as a LoRA (`enable_lora`). So there is never a second engine in the process (two engines
compete for the same GPU memory, and vLLM does not reliably free the first one), and no merged copy of the base
is written to disk.

Every adapter tunefold trains is one plain LoRA on the base (DPO trains on the SFT adapter itself), which vLLM
serves as is. Adapter kinds vLLM cannot serve (DoRA, modules_to_save, bias training) and the stacked DPO adapters of
tunefold 0.1.0 (a stack.json: SFT merged under them) are refused with the reason.

vllm is an optional dependency that needs CUDA. It is imported only inside the functions that use it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefold.errors import InputError
from tunefold.eval.protocol import answer_max_tokens
from tunefold.train.models import STACK_FILE, adapter_stack

if TYPE_CHECKING:
    from tunefold.config import EvalConfig
    from tunefold.eval.generation import Answerer

log = logging.getLogger(__name__)

# LoRAConfig.max_lora_rank must be one of these (vLLM 0.8+; older releases stop at 64 or 256)
MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


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


def lora_rank(adapter: Path) -> int:
    """The rank of an adapter vLLM can serve as one LoRA, or why it cannot."""
    stack = adapter_stack(adapter)
    if len(stack) > 1:
        raise InputError(
            f"{adapter}: a DPO adapter of tunefold 0.1.0, trained on a merged SFT adapter ({STACK_FILE}); vLLM "
            "serves one LoRA: re-run the dpo stage (it now trains the SFT adapter itself), or use eval.backend: hf"
        )
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    unsupported = {"use_dora": "DoRA", "modules_to_save": "modules_to_save", "fan_in_fan_out": "fan_in_fan_out"}
    found = [what for key, what in unsupported.items() if cfg.get(key)]
    if cfg.get("bias", "none") != "none":
        found.append(f"bias {cfg['bias']!r}")
    if found:
        raise InputError(f"{adapter}: {', '.join(found)} cannot be served with eval.backend vllm; use eval.backend: hf")
    return max([int(cfg["r"]), *map(int, (cfg.get("rank_pattern") or {}).values())])


class VllmEngine:
    """One offline vLLM engine on the base model for every local model of the stage (see the module doc)."""

    def __init__(self, base_dir: Path, cfg: EvalConfig, adapters: list[str | None]) -> None:
        from vllm import LLM

        from tunefold.train.device import plan_device

        require_vllm()
        self.cfg = cfg
        self.loras = {a: lora_rank(Path(a)) for a in dict.fromkeys(a for a in adapters if a)}  # adapter -> rank
        lora: dict[str, Any] = {}
        if self.loras:
            rank = max(self.loras.values())
            lora = {"enable_lora": True, "max_lora_rank": max_lora_rank(rank), "max_loras": len(self.loras)}
        plan = plan_device(self.cfg.device)
        self.llm = LLM(model=str(base_dir), dtype=plan.dtype, seed=self.cfg.seed, **lora)
        tokenizer = self.llm.get_tokenizer()
        self.stop_ids = model_stop_ids(base_dir, tokenizer.eos_token_id)
        # the base's template for every model, as the transformers backend does (an adapter directory may carry
        # the training template, which vLLM would otherwise pick up from it)
        self.chat_template = tokenizer.chat_template

    def answerer(self, adapter: str | None) -> Answerer:
        """Answers of the base (no adapter) or of base + `adapter`, as `answer_items` calls them."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        request = None
        if adapter:
            n = list(self.loras).index(adapter) + 1
            request = LoRARequest(f"adapter{n}", n, adapter)

        def answer(convs: list[list[dict[str, str]]], temps: list[float]) -> list[tuple[str, int, bool]]:
            settings = sampling_settings(temps, answer_max_tokens(self.cfg), self.stop_ids, self.cfg.seed)
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
