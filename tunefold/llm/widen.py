"""Serve a quantized GGUF widened to 16 bits (`llm.embedded.compute`): the same weights, computed closer to the
model it quantizes, and faster on a CPU with bf16 instructions.

llama.cpp multiplies a Q4_1 matrix by rounding the activations to 8 bits first, and on x86 its Q4_1 kernels have
no repacked layout: the embedded SmolLM2 (Q4_1) widened to bf16 predicts next tokens 20x closer (KL) to the fp32
model and reads prompts ~2.9x faster on 2 AVX512-BF16 cores (bench/embedded_compute.py). `auto` (the default)
widens a small model (a file up to 256 MB) to bf16 where llama.cpp reports bf16 instructions and serves the file as
it is otherwise. A 16-bit reply is the same alone or batched because the engine then decodes fixed-width steps
(tunefold.llm.engine).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

from tunefold.cores import usable_cores
from tunefold.errors import TunefoldError
from tunefold.io import atomic_path

log = logging.getLogger(__name__)
UNQUANTIZED = {0, 1, 32}  # llama_ftype ALL_F32, MOSTLY_F16, MOSTLY_BF16
# `auto` widens a file of at most this size: its 16-bit copy is up to 4x larger, and a larger model's decoding is
# bound by reading its weights, which the copy would slow down (a 7B Q4 file would become ~14 GB)
AUTO_WIDEN_AT_MOST = 256 << 20


def widen_to(gguf: Path, compute: str) -> str | None:
    """The 16-bit type to serve `gguf` in (`llm.embedded.compute`), or None to serve the file as it is (asked to,
    no bf16 instructions under `auto`, or not quantized)."""
    if compute == "auto":
        small = gguf.stat().st_size <= AUTO_WIDEN_AT_MOST
        compute = "bf16" if small and has_bf16_instructions() else "native"
    if compute == "native" or file_type(gguf) in UNQUANTIZED:
        return None
    return compute


def has_bf16_instructions() -> bool:
    """Whether llama.cpp's CPU backend runs bf16 dot products natively here (x86 AVX512-BF16, what was measured)."""
    import llama_cpp as L

    flags = L.llama_print_system_info().decode().split("|")
    return any(f.split("=")[0].strip() == "AVX512_BF16" and f.split("=")[-1].strip() == "1" for f in flags)


def file_type(gguf: Path) -> int | None:
    """The GGUF's `general.file_type` (llama_ftype), read from its header without loading tensors; once per version
    of the file (a server asks for it to pick its format, its steps and its alias)."""
    st = gguf.stat()
    return _file_type(str(gguf.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _file_type(gguf: str, mtime_ns: int, size: int) -> int | None:
    import llama_cpp as L

    from tunefold.llm.engine import quiet_llama_logs

    quiet_llama_logs(L)
    params = L.llama_model_default_params()
    params.vocab_only = True
    model = L.llama_model_load_from_file(gguf.encode(), params)
    if not model:
        raise TunefoldError(f"llama.cpp could not read {gguf}")
    try:
        buf = ctypes.create_string_buffer(32)
        n = L.llama_model_meta_val_str(model, b"general.file_type", buf, len(buf))
        return int(buf.value) if n > 0 else None
    finally:
        L.llama_model_free(model)


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
