"""A transformers model written as a GGUF (tunefold.llm.export) and answering through llama.cpp
(tunefold.eval.gguf_answer): the same next-token predictions as the fp32 model, the base GGUF's tokenizer and chat
template, and greedy answers equal to the transformers path's. Real llama.cpp and transformers on SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.embedded_compute import fidelity
from tests.test_widen import CONVERSATIONS
from tunefold.config import EmbeddedServerConfig, EvalConfig
from tunefold.errors import TunefoldError
from tunefold.llm.export import export_gguf
from tunefold.train.models import embedded_gguf, load_model

QUESTIONS = [
    "Name three uses of a paperclip.",
    "Write a haiku about rain.",
    "What is 17 times 3? Explain briefly.",
    "Give two tips for a job interview.",
    "Why do leaves change colour in autumn?",
    "Summarise the plot of Cinderella in two sentences.",
]


def test_exported_model_predicts_as_the_fp32_model_and_keeps_the_metadata(base_model: Path, tmp_path: Path) -> None:
    """A wrong tensor layout (llama's rotary halves) or name map would break the predictions, not just shift them."""
    import gguf

    out = export_gguf(load_model(base_model), embedded_gguf(), tmp_path / "m.gguf")
    close = fidelity(out, base_model, CONVERSATIONS)
    assert close["top1_agreement"] >= 0.99 and close["kl"] < 1e-4, close
    ours, theirs = gguf.GGUFReader(out), gguf.GGUFReader(embedded_gguf())
    for key in ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "llama.block_count"):
        assert ours.get_field(key).contents() == theirs.get_field(key).contents()
    assert ours.get_field("tokenizer.ggml.tokens").contents() == theirs.get_field("tokenizer.ggml.tokens").contents()
    assert {t.tensor_type.name for t in ours.tensors} == {"F16", "F32"}
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]


def test_a_model_without_the_templates_tensors_is_refused(base_model: Path, tmp_path: Path) -> None:
    model = load_model(base_model)
    model.model.layers = model.model.layers[:2]  # 2 of the template's 30 blocks
    with pytest.raises(TunefoldError, match="no weights for 252 tensors"):
        export_gguf(model, embedded_gguf(), tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_llamacpp_answers_are_the_transformers_greedy_answers(base_model: Path) -> None:
    """The pipeline's default answering path on the CPU against transformers fp32, greedy, 64 new tokens."""
    from tunefold.eval.generation import hf_answerer
    from tunefold.eval.gguf_answer import gguf_answerer

    cfg = EvalConfig(protocol="quick", max_new_tokens=64)
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    temps = [0.0] * len(convs)
    hf = hf_answerer(cfg, base_model, None)(convs, temps)
    with gguf_answerer(cfg, embedded_gguf(), EmbeddedServerConfig(slots=4), base_model, None) as answer:
        ours = answer(convs, temps)
        sampled = [answer(convs[:2], [0.7, 0.7]) for _ in range(2)]
    assert [a[0] for a in ours] == [a[0] for a in hf]
    assert [a[1:] for a in ours] == [a[1:] for a in hf]  # new tokens and whether the turn ended
    assert sampled[0] == sampled[1] and sampled[0][0][0] != ours[0][0]  # seeded, and really sampled
