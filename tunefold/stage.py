"""What every `python -m tasks.<stage>` entry shares: argument parsing, logging, params, clean errors."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tunefold.config import DEFAULT_PARAMS, Params, load_params
from tunefold.errors import TunefoldError
from tunefold.io import write_json

log = logging.getLogger("tunefold")


def setup_logging(verbose: bool = False) -> None:
    """Our INFO lines; libraries only from WARNING up (GX and transformers are chatty at INFO)."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("tunefold").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def stage_main(
    name: str,
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[Params, argparse.Namespace], dict[str, Any]],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse args, load params, run the stage, write its metrics JSON; turn user errors into one clear line."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{name}", description=doc)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameters file (default: %(default)s)")
    parser.add_argument("--metrics", type=Path, help="where to write this stage's metrics JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    start = time.perf_counter()
    try:
        params = load_params(args.params)
        metrics = run(params, args)
    except TunefoldError as e:
        print(f"error: {name}: {e}", file=sys.stderr)
        return 2
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    if args.metrics:
        write_json(args.metrics, metrics)
    log.info("%s done in %.1fs", name, metrics["seconds"])
    return 0
