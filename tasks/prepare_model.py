"""Stage `prepare_model`: turn `model.base` into a plain safetensors checkpoint under models/base/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tunefold.config import ModelConfig
from tunefold.io import atomic_dir
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.train.models import convert_base


def prepare_model(cfg: ModelConfig, out_dir: Path) -> dict[str, Any]:
    """Convert once so every later stage loads a trainable checkpoint in well under a second."""
    with atomic_dir(out_dir) as tmp:
        info = convert_base(cfg.base, tmp, revision=cfg.revision, dtype=cfg.dtype)
    log.info("base model %s: %s parameters saved to %s", cfg.base, f"{info['parameters']:,}", out_dir)
    return info


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return prepare_model(ctx.params.model, args.out)


def main(argv: list[str] | None = None) -> int:
    return stage_main("prepare_model", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
