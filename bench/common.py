"""What the benches share: the base model they measure."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def base_model(scratch: Path) -> Path:
    """The project's converted base model (`models/base`, from `dvc repro`), else a fresh conversion in `scratch`."""
    from tasks.prepare_model import prepare_model
    from tunefold.config import ModelConfig

    base = ROOT / "models/base"
    if not (base / "config.json").exists():
        base = scratch / "base"
        prepare_model(ModelConfig(), base)
    return base
