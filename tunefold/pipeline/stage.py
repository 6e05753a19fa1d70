"""What every `python -m tasks.<stage>` entry shares: argument parsing, logging, params, clean errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefold.config import DEFAULT_PARAMS, Params, load_params, record_reads
from tunefold.errors import TunefoldError
from tunefold.io import write_json
from tunefold.train.launch import is_rank, launch_ranks

if TYPE_CHECKING:
    from tunefold.llm import Gateway

log = logging.getLogger("tunefold")
PARAMS_READ = Path(".tunefold/params_read")  # per DVC stage: the params keys its last run read


@dataclass
class StageContext:
    """What a stage's run function gets: its name, the validated params, and the gateway on first use."""

    name: str
    params: Params
    _gateway: Gateway | None = field(default=None, repr=False)

    @property
    def gateway(self) -> Gateway:
        """Created on first use, closed (embedded server stopped) by `stage_main`, its metrics recorded."""
        if self._gateway is None:
            from tunefold.llm import Gateway

            self._gateway = Gateway(self.params.llm, stage=self.name)
        return self._gateway

    def close(self) -> dict[str, Any] | None:
        if self._gateway is None:
            return None
        self._gateway.close()
        return self._gateway.metrics()


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
    run: Callable[[StageContext, argparse.Namespace], dict[str, Any]],
    argv: Sequence[str] | None = None,
    processes: Callable[[Params], int] | None = None,
) -> int:
    """Parse args, load params, run the stage, write its metrics JSON (with the gateway's cache hits, tokens and
    cost when the stage called an LLM); turn user errors into one clear line.

    A stage that gives `processes` (training) re-runs itself as that many data-parallel ranks when it is more than
    one; rank 0 then writes the metrics."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{name}", description=doc)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameters file (default: %(default)s)")
    parser.add_argument("--metrics", type=Path, help="where to write this stage's metrics JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    start = time.perf_counter()
    ctx = None
    try:
        ctx = StageContext(name, load_params(args.params))
        n = processes(ctx.params) if processes and not is_rank() else 1
        if n > 1:
            return launch_ranks(f"tasks.{name}", list(sys.argv[1:] if argv is None else argv), n)
        reads = record_reads(ctx.params)
        metrics = run(ctx, args)
    except TunefoldError as e:
        print(f"error: {name}: {e}", file=sys.stderr)
        return 2
    finally:
        llm = ctx.close() if ctx else None
    if llm is not None:
        metrics["llm"] = llm
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    if int(os.environ.get("RANK", "0")) == 0:  # one writer under a distributed launch
        if args.metrics:
            write_json(args.metrics, metrics)
        if "DVC_STAGE" in os.environ:  # what this stage read, for the test that checks dvc.yaml's params lists
            write_json(PARAMS_READ / f"{os.environ['DVC_STAGE']}.json", sorted(reads))
    log.info("%s done in %.1fs", name, metrics["seconds"])
    return 0
