"""`tunefold`: run the pipeline (through Prefect or plain DVC), one stage, or inspect its state."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tunefold.errors import TunefoldError

EPILOG = """\
examples:
  tunefold run                  run every stage through Prefect (a local server is started if none is set)
  tunefold run --dvc            the same with plain `dvc repro`
  tunefold run --stages validate   validate and whatever it needs upstream
  tunefold stage ingest --force    re-run one stage even if DVC finds it up to date
  tunefold status               what is stale, and each stage's latest metrics
  tunefold params               check params.yaml and print the resolved configuration
  tunefold llm-check            one request to each LLM role's endpoint (teacher, judge)
  tunefold export models/dpo/adapter merged/   base + adapters merged into one plain checkpoint
  tunefold cycle                one retrain-and-evaluate cycle: promote the new model only if it passes the gate
  tunefold serve                run cycles on the schedule in params.yaml (cycle.cron)
  tunefold lineage model-v2     data, params, code, base model, judge and prompts behind a model
"""


def _dvc(args: list[str], root: Path) -> int:
    from tunefold.pipeline.dvcrun import dvc_cmd, tool_env

    return subprocess.call(dvc_cmd(*args), cwd=root, env=tool_env())


def cmd_run(a: argparse.Namespace) -> int:
    from tunefold.config import load_params
    from tunefold.pipeline.dag import StageGraph

    load_params(a.root / "params.yaml")
    order = StageGraph.load(a.root / "dvc.yaml").order(a.stages)
    if a.dvc:
        return _dvc(["repro", *(["--force"] if a.force else []), *(a.stages or [])], a.root)
    if not os.environ.get("PREFECT_API_URL"):
        # the temporary local server's usage heartbeat races its own SQLite writes and prints a traceback
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.pipeline import pipeline

    print(f"running {' -> '.join(order)} through Prefect", file=sys.stderr)
    state = pipeline(root=str(a.root), stages=a.stages, force=a.force, max_parallel=a.jobs, return_state=True)
    if not state.is_completed():
        print(f"error: pipeline run {state.name.lower()}: {state.message}", file=sys.stderr)
        return 1
    return 0


def cmd_stage(a: argparse.Namespace) -> int:
    from tunefold.config import load_params
    from tunefold.pipeline.dag import StageGraph

    load_params(a.root / "params.yaml")
    StageGraph.load(a.root / "dvc.yaml").order([a.name])
    return _dvc(["repro", "--single-item", a.name, *(["--force"] if a.force else [])], a.root)


def cmd_status(a: argparse.Namespace) -> int:
    from tunefold.pipeline.dag import StageGraph
    from tunefold.pipeline.summary import stage_metrics

    graph = StageGraph.load(a.root / "dvc.yaml")
    rc = _dvc(["status"], a.root)
    for name in graph.order():
        metrics = stage_metrics(graph.stages[name], a.root)
        shown = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
        print(f"{name}: {json.dumps(shown) if shown else '(not run yet)'}")
    return rc


def cmd_params(a: argparse.Namespace) -> int:
    import yaml

    from tunefold.config import load_params

    params = load_params(a.params)
    print(yaml.safe_dump(params.model_dump(by_alias=True, mode="json"), sort_keys=False), end="")
    return 0


def cmd_dag(a: argparse.Namespace) -> int:
    from tunefold.pipeline.dag import StageGraph

    graph = StageGraph.load(a.root / "dvc.yaml")
    for name in graph.order():
        ups = sorted(graph.upstream[name])
        print(f"{name}" + (f"  <- {', '.join(ups)}" if ups else ""))
    return 0


def cmd_llm_check(a: argparse.Namespace) -> int:
    """One tiny uncached request per role: proves the endpoint, model id and key work before a long run."""
    import time

    from tunefold.config import load_params
    from tunefold.llm import ChatRequest, Gateway
    from tunefold.pipeline.stage import setup_logging

    setup_logging()
    params = load_params(a.root / "params.yaml")
    with Gateway(params.llm, stage="llm-check", cache_dir=a.root / params.llm.cache_dir) as gw:
        for role in a.roles:
            start = time.perf_counter()
            req = ChatRequest(
                messages=[{"role": "user", "content": "Reply with the word ready."}],
                max_tokens=8,
                temperature=0.0,
                seed=int(time.time()),
            )
            result = gw.chat(role, req)
            took = time.perf_counter() - start
            prov = result.provenance
            status = f"ok ({took:.2f}s): {result.text!r}" if result.ok else f"FAILED: {result.error}"
            print(f"llm.{role}: {prov['endpoint']} model={prov['model']} {status}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """Merge an adapter (and the adapters under it) into the base: a plain checkpoint for vLLM, llama.cpp, hubs."""
    from tunefold.io import atomic_dir
    from tunefold.train.models import load_tokenizer, load_trained

    model = load_trained(a.base, a.adapter)  # merged on the CPU in fp32: exact, and any machine can do it
    tokenizer = load_tokenizer(a.adapter if (a.adapter / "tokenizer_config.json").exists() else a.base)
    with atomic_dir(a.out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    print(f"merged {a.adapter} into {a.base}: {a.out}")
    return 0


def cmd_cycle(a: argparse.Namespace) -> int:
    from flows.cycle import cycle

    state = cycle(root=str(a.root.resolve()), return_state=True)
    if not state.is_completed():
        print(f"error: cycle {state.name.lower()}: {state.message}", file=sys.stderr)
        return 1
    entry = state.result()
    print(entry.get("skipped") or f"{entry['tag']}: {entry['reason']}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from flows.cycle import deploy, serve
    from tunefold.config import load_params

    params = load_params(a.root / "params.yaml")
    if a.command == "deploy":
        deploy(a.root.resolve(), params, a.pool)
        print(
            f"deployment tunefold-cycle/{params.cycle.deployment} on work pool {a.pool}; start a worker with "
            f"`prefect worker start --pool {a.pool}`"
        )
        return 0
    serve(a.root.resolve(), params)
    return 0


def cmd_lineage(a: argparse.Namespace) -> int:
    from tunefold.config import load_params
    from tunefold.cycle.registry import Registry, print_lineage

    registry = Registry(a.root, load_params(a.root / "params.yaml"))
    entry = registry.find(a.model) if a.model else registry.champion()
    if entry is None:
        print("no promoted model yet; run `tunefold cycle`", file=sys.stderr)
        return 1
    print(json.dumps(entry, indent=2) if a.json else print_lineage(entry))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunefold",
        description="A versioned pipeline: ingest -> validate -> curriculum -> LoRA SFT/DPO -> MT-Bench/FLASK -> "
        "report. dvc.yaml is the graph, params.yaml the configuration.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, default=Path(), help="project root (default: current directory)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run the pipeline (Prefect flow; --dvc for plain dvc repro)",
        description="Run the pipeline. Up-to-date stages are skipped (DVC decides). With PREFECT_API_URL set "
        "the run shows in that server's UI; otherwise Prefect runs locally.",
    )
    p.add_argument("--stages", nargs="+", metavar="STAGE", help="only these stages and what they need")
    p.add_argument("--force", action="store_true", help="re-run the selected stages even if up to date")
    p.add_argument("--dvc", action="store_true", help="run with `dvc repro` instead of Prefect")
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="independent stages run side by side, at most N at once (default: CPUs, at most 4; GPU stages one "
        "at a time)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "stage",
        help="run one stage through DVC (records it in dvc.lock)",
        description="Run a single stage with `dvc repro --single-item` (its inputs must exist).",
    )
    p.add_argument("name", help="stage name from dvc.yaml (see `tunefold dag`)")
    p.add_argument("--force", action="store_true", help="run even if DVC finds it up to date")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("status", help="stale stages (dvc status) and each stage's latest metrics")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("params", help="validate params.yaml and print the resolved configuration")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("dag", help="stages in run order with their upstream stages")
    p.set_defaults(func=cmd_dag)

    p = sub.add_parser(
        "export",
        help="merge a trained adapter into the base model and save a plain checkpoint",
        description="Write base + adapter (+ the adapters it was trained on top of) as one merged checkpoint.",
    )
    p.add_argument("adapter", type=Path, help="adapter directory, e.g. models/dpo/adapter")
    p.add_argument("out", type=Path, help="directory for the merged checkpoint")
    p.add_argument("--base", type=Path, default=Path("models/base"), help="base model (default: %(default)s)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "llm-check",
        help="send one request to each LLM role's endpoint (starting the embedded server if needed)",
        description="Check llm.teacher / llm.judge from params.yaml: endpoint, model id and API key.",
    )
    p.add_argument("roles", nargs="*", default=["teacher", "judge"], help="roles to check (default: both)")
    p.set_defaults(func=cmd_llm_check)

    p = sub.add_parser(
        "cycle",
        help="one retrain-and-evaluate cycle now: pipeline, promotion gate, registry entry, git tag",
        description="Run the pipeline where stale, then promote the candidate over the champion only if the gate "
        "(params cycle.gate) passes. Writes the decision to the registry and tags the commit.",
    )
    p.set_defaults(func=cmd_cycle)
    p = sub.add_parser(
        "serve",
        help="run cycles on the schedule in params (cycle.cron / cycle.interval_seconds); stays in the foreground",
        description="A Prefect deployment served by this process (no work pool). Overlapping runs are prevented.",
    )
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser(
        "deploy",
        help="register the cycle as a deployment on a Prefect work pool (run by `prefect worker start`)",
    )
    p.add_argument("--pool", required=True, help="work pool name (e.g. one created with `prefect work-pool create`)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("lineage", help="where a model comes from: data, params, code, base model, judge, prompts")
    p.add_argument("model", nargs="?", help="tag (model-v2), version (2) or cycle id; default: the champion")
    p.add_argument("--json", action="store_true", help="the whole registry entry as JSON")
    p.set_defaults(func=cmd_lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Prefect's temporary server gives up after 20 s; its first start (database migrations) on a busy machine
    # takes longer than that.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TunefoldError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
