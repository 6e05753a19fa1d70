"""`bench/gpu.py`, the GPU check, runs in the suite on a tiny CPU model, so the script cannot rot between GPU runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_bench_runs_its_checks_on_a_tiny_cpu_model(base_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "bench/gpu.py", "--tiny", "--tokenizer", str(base_model), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tiny = json.loads(out.read_text())["tiny"]
    assert tiny["model"]["layers"] == 2 and tiny["model"]["parameters"] > 0
    sft, dpo, gen = tiny["sft"], tiny["dpo"], tiny["generation"]["plan"]
    assert (sft["device"], sft["dtype"], dpo["device"]) == ("cpu", "float32", "cpu")
    assert sft["last_loss"] < sft["first_loss"] and sft["real_tokens_per_second"] > 0 and sft["mfu_h100_dense_bf16"] > 0
    assert dpo["steps"] == 4 and gen["tokens_per_second"] > 0 and gen["device"] == "cpu"
    assert gen["greedy_repeat_same"] == "2/2" and gen["mixed_temperatures_greedy_rows_same"] == "1/1"
