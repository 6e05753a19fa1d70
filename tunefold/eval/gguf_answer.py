"""`eval.backend: llamacpp`, what `auto` picks on the CPU for a base that came from a GGUF: the base with its adapter
merged, written as an f16 GGUF with the base GGUF's tokenizer and chat template (tunefold.llm.export), answered by
the embedded batching server.

transformers pays ~60 ms of overhead per decode step on 2 cores whatever the batch, llama.cpp ~11 ms, so a stage's
answers come faster once the export (~4 s) and the server's start are paid (`generate` 134 -> 101 s; on 16 answers
alone it is 0.93x: bench/generation.py). f16 predicts the next token as the fp32 model does at 99.6% of positions,
so greedy answers are mostly the same text and otherwise part where the model nearly tied: 12 of 16 MT-Bench first
turns at 128 tokens, the pipeline's 14 FLASK answers, 6 of 6 in tests/test_export.py at 64 tokens. The export is
decoded in fixed-width steps (tunefold.llm.engine), so an answer does not depend on the ones decoded beside it.
Sampled rows use transformers' defaults (top-k 50, no top-p, min-p or repeat penalty) at their own temperature.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tunefold.eval.protocol import answer_max_tokens
from tunefold.train.models import resolve_base

if TYPE_CHECKING:
    from tunefold.config import EmbeddedServerConfig, EvalConfig
    from tunefold.eval.generation import Answerer

# a sampled row as transformers samples it when the generation config sets nothing else: top-k 50 only
TRANSFORMERS_SAMPLING = {"top_k": 50, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}


def served_as(slots: int) -> str:
    """How the answers were computed, for their fingerprint: an f16 export decodes steps as wide as the server's
    slots, and the width shapes its replies (tunefold.llm.engine)."""
    return f"llamacpp-f16-w{slots}"


def gguf_template(base: str) -> Path | None:
    """The GGUF `model.base` came from (its metadata and tokenizer make the export's), or None."""
    name, gguf = resolve_base(base)
    return Path(name) / gguf if gguf else None


def answering_backend(cfg: EvalConfig, base: str) -> Literal["hf", "vllm", "llamacpp"]:
    """The backend local models answer with: auto is llama.cpp on the CPU for a GGUF-born base, else transformers."""
    if cfg.backend != "auto":
        return cfg.backend
    from tunefold.train.device import plan_device

    if plan_device(cfg.device).device == "cpu" and gguf_template(base) is not None:
        return "llamacpp"
    return "hf"


@contextlib.contextmanager
def gguf_answerer(
    cfg: EvalConfig, template: Path, server_cfg: EmbeddedServerConfig, base_dir: Path, adapter: str | None
) -> Iterator[Answerer]:
    """An Answerer for base + `adapter` on an embedded server of its own (`llm.embedded`'s slots and context),
    stopped on leaving the block; the exported GGUF lives in a temporary directory as long."""
    from openai import OpenAI

    from tunefold.llm.export import export_gguf
    from tunefold.llm.server import EmbeddedServer
    from tunefold.train.models import load_trained

    with tempfile.TemporaryDirectory(prefix="tunefold-answer-") as tmp:
        gguf = export_gguf(load_trained(base_dir, adapter), template, Path(tmp) / "model.gguf")
        server = EmbeddedServer(server_cfg.model_copy(update={"model": str(gguf), "compute": "native"})).start()
        try:
            client = OpenAI(base_url=server.base_url, api_key="embedded-no-key", max_retries=0, timeout=3600)
            max_tokens = answer_max_tokens(cfg)

            def one(conv: list[dict[str, str]], temperature: float) -> tuple[str, int, bool]:
                reply = client.chat.completions.create(
                    model=server.alias,
                    messages=conv,  # type: ignore[arg-type]
                    temperature=temperature,
                    max_tokens=max_tokens,
                    seed=cfg.seed,
                    extra_body=TRANSFORMERS_SAMPLING,
                )
                choice, used = reply.choices[0], reply.usage.completion_tokens if reply.usage else 0
                return (choice.message.content or "").strip(), used, choice.finish_reason == "stop"

            def answer(convs: list[list[dict[str, str]]], temps: list[float]) -> list[tuple[str, int, bool]]:
                with ThreadPoolExecutor(max(1, len(convs)), thread_name_prefix="gguf-answer") as pool:
                    return list(pool.map(one, convs, temps))

            yield answer
        finally:
            server.stop()
