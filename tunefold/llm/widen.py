"""Serve a quantized GGUF widened to 16 bits (`llm.embedded.compute: bf16 | f16`): the same weights, computed
closer to the model it quantizes, and faster on a CPU.

llama.cpp multiplies a Q4_1 matrix by rounding the activations to 8 bits first, and on x86 its Q4_1 kernels have
no repacked layout: the embedded SmolLM2 (Q4_1) widened to bf16 predicts next tokens 20x closer (KL) to the fp32
model and runs the pipeline's judge prompts 1.3x faster (bench/embedded_compute.py). Not the default: in 16 bits a
reply depends on how many requests were decoded beside it (13 of 20 bf16 replies were the same alone and 8 together,
20 of 20 for Q4_1), so replies would vary from run to run with the server's load.
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
UNQUANTIZED = {"F32", "F16", "BF16"}


def widen_to(gguf: Path, compute: str) -> str | None:
    """The 16-bit type to serve `gguf` in (`llm.embedded.compute`), or None to serve the file as it is (asked to, or
    not quantized)."""
    if compute == "native":
        return None
    from gguf import GGUFReader

    if all(t.tensor_type.name in UNQUANTIZED for t in GGUFReader(gguf).tensors):
        return None
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
