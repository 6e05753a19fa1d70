"""What the benches share: the base model they measure, the questions they ask."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# chat requests the thread benches send (short, varied, as a judge or teacher gets them)
QUESTIONS = [
    "Explain how rivers form deltas.",
    "Write a short poem about winter.",
    "What is the capital of Australia, and why was it chosen?",
    "Compare Python and Rust for systems programming.",
    "Describe the water cycle to a child.",
    "Give three tips for a job interview.",
]


def base_model(scratch: Path) -> Path:
    """The project's converted base model (`models/base`, from `dvc repro`), else a fresh conversion in `scratch`."""
    from tasks.prepare_model import prepare_model
    from tunefold.config import ModelConfig

    base = ROOT / "models/base"
    if not (base / "config.json").exists():
        base = scratch / "base"
        prepare_model(ModelConfig(), base)
    return base
