"""Batched answer generation with transformers: left padding, KV cache, length-sorted batches.

Prompts of different temperatures share a batch: each row is sampled at its own temperature, and a greedy row
(temperature 0) keeps only its most likely token, so it gets the answer greedy decoding gives. MT-Bench asks at
three temperatures; batches split by temperature ran 3 small batches per turn where one fits. Batches are seeded,
so a re-run gives the same text.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunefold.eval.protocol import answer_max_tokens

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunefold.config import EmbeddedServerConfig, EvalConfig, ModelConfig

log = logging.getLogger(__name__)

# how transformers' batches are formed, in the answers' fingerprint: rows of different temperatures share a batch
# since this revision, which changes sampled answers (greedy ones stay the same)
BATCHING = "mixed-temperatures"

# (conversations, temperatures) -> (text, new tokens, stopped at the end-of-turn token) per conversation: what a
# local backend (transformers here, vLLM in vllm_engine) gives `generate` for one batch of turns
Answerer = Callable[[list[list[dict[str, str]]], list[float]], list[tuple[str, int, bool]]]


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    temperature: float = 0.0


@dataclass(frozen=True)
class Generated:
    text: str
    new_tokens: int
    stopped: bool  # ended with the end-of-turn token rather than hitting max_new_tokens


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every end-of-turn token of the model: its generation config may list several (Llama 3 ends a turn with
    <|eot_id|> and the text with <|end_of_text|>); the tokenizer's own eos alone would let answers run on."""
    return end_of_turn_ids(tokenizer.eos_token_id, model.generation_config.eos_token_id)


def end_of_turn_ids(tokenizer_eos: int | None, configured: int | list[int] | None) -> list[int]:
    """The tokenizer's eos and the generation config's eos (one id or a list), each once, in that order; shared by
    the transformers and vLLM backends so both stop at the same tokens."""
    ids = [tokenizer_eos, *(configured if isinstance(configured, list) else [configured])]
    return list(dict.fromkeys(i for i in ids if i is not None))


class Generator:
    """Generates chat answers for many prompts at once on the model's device."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 8,
        max_new_tokens: int = 1024,
        seed: int = 0,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokens_generated = 0
        self.stop_ids = stop_token_ids(model, tokenizer)

    def generate(self, prompts: Sequence[Prompt]) -> list[Generated]:
        texts = [
            self.tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True) for p in prompts
        ]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # similar lengths share a batch
        out: list[Generated | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self._batch([texts[i] for i in idx], [prompts[i].temperature for i in idx], start)
            for i, g in zip(idx, batch, strict=True):
                out[i] = g
        return [g for g in out if g is not None]

    def _batch(self, texts: list[str], temperatures: list[float], offset: int) -> list[Generated]:
        import torch
        from transformers import LogitsProcessorList

        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        if any(t > 0 for t in temperatures):
            # temperature 1 leaves transformers' own temperature warper out; the rows' own come first
            sampling = {"do_sample": True, "temperature": 1.0}
            sampling["logits_processor"] = LogitsProcessorList([RowTemperatures(temperatures)])
        else:
            sampling = {"do_sample": False}
        torch.manual_seed(self.seed + offset)
        with torch.no_grad():
            ids = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        results = []
        for row in ids[:, batch["input_ids"].shape[1] :].tolist():
            end = next((i for i, tok in enumerate(row) if tok in self.stop_ids), None)
            stopped = end is not None
            row = row[:end] if stopped else row
            self.tokens_generated += len(row)
            results.append(Generated(self.tokenizer.decode(row, skip_special_tokens=True).strip(), len(row), stopped))
        return results


class RowTemperatures:
    """A logits processor with a temperature per row of the batch: a sampled row's logits are divided by its
    temperature (as transformers' temperature warper does, before top-k); a greedy row keeps only its highest
    logit, so sampling can only pick the token greedy decoding picks (the first of equal highest, as argmax)."""

    def __init__(self, temperatures: list[float]) -> None:
        self.temperatures = temperatures

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import torch

        temps = torch.tensor(self.temperatures, dtype=scores.dtype, device=scores.device)
        greedy = temps <= 0
        scaled = scores / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
        best = torch.full_like(scores, float("-inf")).scatter(1, scores.argmax(-1, keepdim=True), 0.0)
        return torch.where(greedy[:, None], best + scores, scaled)


def hf_answerer(cfg: EvalConfig, base_dir: Path, adapter: str | None) -> Answerer:
    """The transformers backend of base (+ `adapter`), loaded by the device plan of `eval.device`."""
    from tunefold.train.device import plan_device
    from tunefold.train.models import load_tokenizer, load_trained

    model = load_trained(base_dir, adapter, plan_device(cfg.device))
    gen = Generator(model, load_tokenizer(base_dir), cfg.batch_size, answer_max_tokens(cfg), cfg.seed)

    def answer(convs: list[list[dict[str, str]]], temps: list[float]) -> list[tuple[str, int, bool]]:
        out = gen.generate([Prompt(c, t) for c, t in zip(convs, temps, strict=True)])
        return [(g.text, g.new_tokens, g.stopped) for g in out]

    return answer


@contextlib.contextmanager
def local_answerer(
    cfg: EvalConfig,
    backend: str,
    model: ModelConfig,
    server: EmbeddedServerConfig,
    base_dir: Path,
    adapter: str | None,
) -> Iterator[Answerer]:
    """transformers or llama.cpp for base + `adapter`, as the resolved `backend` says (vLLM shares one engine
    between models, so its callers build it themselves)."""
    from tunefold.errors import InputError
    from tunefold.eval.gguf_answer import gguf_answerer, gguf_template

    if backend != "llamacpp":
        yield hf_answerer(cfg, base_dir, adapter)
        return
    template = gguf_template(model.base)
    if template is None:
        raise InputError(
            "eval.backend llamacpp answers with the base GGUF's tokenizer and template, and model.base is not a GGUF "
            "('embedded' or a .gguf file): set eval.backend to hf"
        )
    with gguf_answerer(cfg, template, server, base_dir, adapter) as answer:
        yield answer
