"""Benchmark: the `generate` and `mt_bench` stages fanned out over a local Dask cluster (`eval.fanout.workers`)
vs the same stages in one process, on the project's MT-Bench-format questions (2 turns each) with the embedded
models. Generation: base model answers for candidate and baseline (both local). Judging: single-answer grading of
the candidate's turns by the embedded llama.cpp judge, fresh cache per run (one server vs one per worker).

Run: .venv/bin/python bench/fanout.py [--workers 2] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _params(work: Path, name: str, workers: int, max_new_tokens: int) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["eval"] |= {"max_new_tokens": max_new_tokens, "fanout": {"workers": workers}}
    params["eval"]["candidate"] = {"model_id": "candidate"}  # the base model: nothing to train first
    params["eval"]["mt_bench"]["pairwise"] = False
    params["llm"]["cache_dir"] = str(work / f"cache-{name}")
    params["llm"]["judge"] |= {"max_tokens": 128}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.common import base_model
    from tasks import generate, mt_bench

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = base_model(work)
        result: dict[str, object] = {"workers": args.workers, "max_new_tokens": args.max_new_tokens,
                                     "cpus": os.cpu_count()}  # fmt: skip
        for name, workers in (("one_process", 0), ("fanned_out", args.workers)):
            params = _params(work, name, workers, args.max_new_tokens)
            answers = work / f"answers-{name}"
            common = ["--params", str(params)]
            outs = ["--base", str(base), "--out", str(answers), "--flask-out", str(work / f"flask-{name}")]
            assert generate.main([*common, *outs, "--metrics", str(work / f"gen-{name}.json")]) == 0
            gen = json.loads((work / f"gen-{name}.json").read_text())
            assert mt_bench.main([*common, "--answers", str(answers), "--out", str(work / f"judged-{name}"),
                                  "--metrics", str(work / f"mt-{name}.json")]) == 0  # fmt: skip
            mt = json.loads((work / f"mt-{name}.json").read_text())
            overall = mt["candidate"]["overall"]
            result[name] = {
                "generate_s": gen["seconds"],
                "new_tokens": sum(v["new_tokens"] for k, v in gen.items() if isinstance(v, dict) and "new_tokens" in v),
                "mt_bench_s": mt["seconds"], "judged": overall["judged"], "parse_failures": overall["parse_failures"],
            }  # fmt: skip
        one, fan = result["one_process"], result["fanned_out"]
        assert isinstance(one, dict) and isinstance(fan, dict)
        result["generate_speedup"] = round(one["generate_s"] / fan["generate_s"], 2)
        result["mt_bench_speedup"] = round(one["mt_bench_s"] / fan["mt_bench_s"], 2)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
