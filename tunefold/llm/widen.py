"""Serve a small quantized GGUF in 16 bits: the same weights, computed closer to the model and faster on a CPU.

llama.cpp multiplies a Q4_1 matrix by rounding the activations to 8 bits first, and on x86 its Q4_1 kernels have
no repacked layout: the embedded SmolLM2 (Q4_1) widened once to bf16 predicts next tokens 20x closer (KL) to the
fp32 model it quantizes and runs the pipeline's judge prompts 1.5x faster (bench/embedded_compute.py). A larger
model keeps its file: decoding it is bound by reading the weights, which a 16-bit copy makes 3-4x bigger.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from tunefold.cores import usable_cores
from tunefold.errors import TunefoldError
from tunefold.io import atomic_path

log = logging.getLogger(__name__)
WIDEN_AT_MOST = 1 << 30  # bytes of the 16-bit copy `auto` makes (~500M parameters); larger models stay quantized
UNQUANTIZED = {"F32", "F16", "BF16"}


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), where bf16 is the fastest 16-bit format."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def widen_to(gguf: Path, compute: str) -> str | None:
    """The 16-bit type to serve `gguf` in (`llm.embedded.compute`), or None to serve the file as it is (asked to, or
    not quantized)."""
    if compute == "native":
        return None
    from gguf import GGUFReader

    tensors = GGUFReader(gguf).tensors
    if all(t.tensor_type.name in UNQUANTIZED for t in tensors):
        return None
    if compute == "auto":
        if 2 * sum(int(t.n_elements) for t in tensors) > WIDEN_AT_MOST:
            return None
        return "bf16" if cpu_has_bf16() else "f16"
    return compute


def gguf_cache() -> Path:
    """Widened copies live beside the user's other model caches, shared by every project checkout and test copy."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunefold" / "gguf"


def widened(gguf: Path, dtype: str, fingerprint: str) -> Path:
    """The 16-bit copy of `gguf` (content hash `fingerprint`), made once by llama.cpp and reused after."""
    import llama_cpp as L

    from tunefold.llm.engine import quiet_llama_logs

    out = gguf_cache() / f"{gguf.stem}.{fingerprint}.gguf"
    if out.is_file():
        return out
    log.info("widening %s to %s once, into %s", gguf.name, dtype, out.parent)
    quiet_llama_logs(L)
    params = L.llama_model_quantize_default_params()
    params.ftype = {"bf16": L.LLAMA_FTYPE_MOSTLY_BF16, "f16": L.LLAMA_FTYPE_MOSTLY_F16}[dtype]
    params.allow_requantize = True
    params.nthread = usable_cores()
    with atomic_path(out) as tmp:
        if L.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise TunefoldError(f"llama.cpp could not widen {gguf} to {dtype} (llm.embedded.compute: native serves it)")
    return out
