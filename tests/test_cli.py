"""The CLI explains itself, fails clearly on bad params, and starts without importing the heavy stack."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run

CLI = [sys.executable, "-m", "tunefold.cli"]


@pytest.mark.parametrize("sub", [[], ["run"], ["stage"], ["status"], ["params"], ["dag"], ["llm-check"], ["export"]])
def test_help(sub: list[str]) -> None:
    out = run([*CLI, *sub, "--help"], ROOT).stdout
    assert "usage: tunefold" in out


def test_stage_entries_have_help() -> None:
    for stage in ("prepare_model", "ingest", "validate"):
        out = run([sys.executable, "-m", f"tasks.{stage}", "--help"], ROOT).stdout
        assert f"python -m tasks.{stage}" in out and "--params" in out


def test_cli_imports_stay_light() -> None:
    code = "import sys, tunefold.cli, tasks.ingest, tasks.validate; print(sorted(m for m in ('torch','trl','peft',"
    code += "'great_expectations','transformers','prefect') if m in sys.modules))"
    assert run([sys.executable, "-c", code], ROOT).stdout.strip() == "[]"


def test_dag_lists_stages_in_order() -> None:
    out = run([*CLI, "dag"], ROOT).stdout.splitlines()
    names = [line.split()[0] for line in out]
    assert names.index("prepare_model") < names.index("validate") and names.index("ingest") < names.index("validate")


def test_bad_params_fail_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("ingest:\n  sources: [{path: a.jsonl}]\n  colour: blue\n")
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    proc = run([*CLI, "--root", str(tmp_path), "run", "--dvc"], tmp_path, check=False)
    assert proc.returncode == 2
    assert "params.yaml:3: ingest.colour: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    entry = [sys.executable, "-m", "tasks.ingest", "--params", str(tmp_path / "params.yaml"), "--out", "x"]
    proc = run(entry, tmp_path, check=False)
    assert proc.returncode == 2 and "error: ingest:" in proc.stderr and "ingest.colour" in proc.stderr


def test_params_prints_resolved_config() -> None:
    out = run([*CLI, "params"], ROOT).stdout
    assert "max_reject_fraction: 0.2" in out and "base: embedded" in out
