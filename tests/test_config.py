"""params.yaml errors name the key and its line; the shipped params.yaml is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunefold.config import load_params
from tunefold.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.model.base == "embedded"
    assert params.validate_.max_reject_fraction == 0.2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ingest:\n  sources:\n    - path: a.jsonl\n  dedup: exact\n", ["params.yaml:4: ingest.dedup: unknown key"]),
        (
            "ingest:\n  sources: [{path: a.jsonl}]\nvalidate:\n  max_tokens: lots\n",
            ["params.yaml:4: validate.max_tokens: Input should be a valid integer", "'lots'"],
        ),
        ("ingest:\n  sources: []\n", ["params.yaml:2: ingest.sources: List should have at least 1 item"]),
        ("model:\n  base: embedded\n", ["ingest: Field required"]),
        (
            "ingest:\n  sources:\n    - path: a.jsonl\n      format: xml\n",
            ["params.yaml:4: ingest.sources.0.format: Input should be"],
        ),
        (
            "ingest:\n  sources: [{path: a}]\nvalidate:\n  min_tokens: 9\n  max_tokens: 3\n",
            ["min_tokens (9) is greater"],
        ),
        ("ingest: [unclosed\n", ["not valid YAML"]),
    ],
)
def test_bad_params_name_key_and_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    for fragment in expected:
        assert fragment in str(err.value)


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
