"""Widening the embedded GGUF to 16 bits: closer to the unquantized model than its own quantized kernels, made once
and reused, and named apart (alias, cache fingerprint) from the file served as it is. Real llama.cpp throughout."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.embedded_compute import fidelity
from tunefold.config import EmbeddedServerConfig
from tunefold.llm import widen
from tunefold.llm.server import EmbeddedServer, embedded_alias, file_fingerprint
from tunefold.train.models import embedded_gguf

# judge-like conversations: instructions, a question, an answer to grade
CONVERSATIONS = [
    [
        {"role": "system", "content": "You grade answers. Reply with a rating from 1 to 10 and one sentence why."},
        {"role": "user", "content": f"Question: {q}\nAnswer: {a}\nRate the answer."},
    ]
    for q, a in [
        ("Why is the sky blue?", "Sunlight scatters off air molecules, and blue light scatters the most."),
        ("What is 17 times 3?", "17 times 3 is 51, since 17 + 17 + 17 = 51."),
        ("Name a use of a paperclip.", "A paperclip can hold sheets of paper together or reset a router."),
    ]
]


def test_widened_model_predicts_closer_to_the_unquantized_one(base_model: Path) -> None:
    """`models/base` holds the GGUF's own weights in fp32; the 16-bit copies follow it more closely than llama.cpp's
    Q4_1 kernels (which round the activations to 8 bits) do."""
    source = embedded_gguf()
    native = fidelity(source, base_model, CONVERSATIONS)
    for dtype in ("bf16", "f16"):
        ours = fidelity(widen.widened(source, dtype, file_fingerprint(source) + f"-{dtype}"), base_model, CONVERSATIONS)
        assert ours["positions"] == native["positions"] > 100
        assert ours["kl"] < native["kl"] / 5, (dtype, ours, native)
        assert ours["top1_agreement"] >= native["top1_agreement"], (dtype, ours, native)


def test_a_widened_copy_is_made_once_and_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = embedded_gguf()
    first = widen.widened(source, "bf16", "abc-bf16")
    assert first.parent == tmp_path / "tunefold" / "gguf" and first.is_file()
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left beside it
    mtime = first.stat().st_mtime_ns
    assert widen.widened(source, "bf16", "abc-bf16") == first and first.stat().st_mtime_ns == mtime
    assert widen.widen_to(first, "f16") is None  # already 16-bit: served as it is


def test_auto_widens_where_bf16_is_native_and_only_quantized_files() -> None:
    """`auto` (the default) serves bf16 where llama.cpp has the instructions for it (bench/embedded_compute.py), the
    file as it is elsewhere; a file already in 16 or 32 bits is never widened."""
    source = embedded_gguf()
    assert EmbeddedServerConfig().compute == "auto" and widen.widen_to(source, "native") is None
    assert widen.widen_to(source, "auto") == ("bf16" if widen.has_bf16_instructions() else None)
    assert widen.widen_to(source, "bf16") == "bf16" and widen.widen_to(source, "f16") == "f16"
    assert widen.file_type(source) == 3  # llama_ftype MOSTLY_Q4_1
    assert source.stat().st_size <= widen.AUTO_WIDEN_AT_MOST  # a large model keeps its file under auto


def test_auto_keeps_a_large_model_in_its_own_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Widening a 7B Q4 file would make a ~14 GB copy that decodes slower (weight-bound): auto keeps it."""
    monkeypatch.setattr(widen, "AUTO_WIDEN_AT_MOST", embedded_gguf().stat().st_size - 1)
    assert widen.widen_to(embedded_gguf(), "auto") is None
    assert widen.widen_to(embedded_gguf(), "bf16") == "bf16"  # asked for, it is widened whatever the size


def test_widened_and_native_servers_are_told_apart() -> None:
    """Different numbers give different replies: the alias names the format and the cache fingerprint differs."""
    native = EmbeddedServer(EmbeddedServerConfig(compute="native"))
    wide = EmbeddedServer(EmbeddedServerConfig(compute="bf16"))
    assert native.alias == embedded_gguf().stem.lower() == embedded_alias(EmbeddedServerConfig(compute="native"))
    assert wide.alias == native.alias + "-bf16" == embedded_alias(EmbeddedServerConfig(compute="bf16"))
    assert wide.fingerprint != native.fingerprint and wide.fingerprint.startswith(native.fingerprint)
    # 16-bit steps are as wide as the slots, and the width shapes a reply: it is in the cache fingerprint
    assert wide.fingerprint.endswith("-bf16-w8") and native.fingerprint == native.weights
    narrow = EmbeddedServer(EmbeddedServerConfig(compute="bf16", slots=4))
    assert narrow.fingerprint.endswith("-w4") and narrow.weights == wide.weights
