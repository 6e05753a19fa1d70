"""Write a transformers model as a 16-bit GGUF that llama.cpp serves, with the metadata of the GGUF it came from.

A base model that came from a GGUF (the embedded SmolLM2, or `model.base: some.gguf`) keeps that file's tokenizer,
chat template and hyper-parameters; only the weights change, e.g. to a trained adapter merged into them. llama.cpp
runs such a model on the CPU several times faster per token than transformers (bench/generation.py), so the answers
of a candidate are decoded there. f16 keeps 11 bits of each weight: its next-token predictions match the fp32
model's at 99.6% of positions (tests/test_export.py checks the export this way, which also catches a wrong layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunefold.errors import TunefoldError
from tunefold.io import atomic_path

SKIP_FIELDS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


def _rotary_layout(w: Any, heads: int) -> Any:
    """transformers keeps each head's rotary pairs as halves, llama.cpp's llama graph as neighbours: interleave."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def export_gguf(model: Any, template: Path, out: Path) -> Path:
    """Write `model`'s weights in f16 (norms in f32) as `out`, named and described as in `template`."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(template)
    arch = str(reader.get_field("general.architecture").contents())
    names = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in names:
        raise TunefoldError(f"{template}: GGUF architecture {arch!r} is unknown to gguf {gguf.__version__}")
    wanted = {t.name: t for t in reader.tensors}
    blocks = int(reader.get_field(f"{arch}.block_count").contents())
    tensor_map = gguf.get_tensor_name_map(names[arch], blocks)
    heads = int(reader.get_field(f"{arch}.attention.head_count").contents())
    kv_field = reader.get_field(f"{arch}.attention.head_count_kv")
    kv_heads = int(kv_field.contents()) if kv_field else heads

    tensors: dict[str, Any] = {}
    for hf_name, param in model.state_dict().items():
        name = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name not in wanted or name in tensors:  # e.g. lm_head tied to the embedding the template stores once
            continue
        w = param.detach().float().cpu().numpy()
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            w = _rotary_layout(w, heads if "attn_q" in name else kv_heads)
        tensors[name] = w.astype(np.float16) if w.ndim > 1 else w.astype(np.float32)
    missing = sorted(set(wanted) - set(tensors))
    if missing:
        raise TunefoldError(f"the model has no weights for {len(missing)} tensors of {template.name}: {missing[:3]}")

    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        for field in reader.fields.values():
            if field.name.startswith(SKIP_FIELDS):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        for t in reader.tensors:  # the template's order
            writer.add_tensor(t.name, tensors[t.name])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out
