"""Reading instruction data files and recognising the common row shapes.

Readers yield one `RawRow` per physical row with its location, or the reason it could not be read, so that
one bad line never costs the valid rows around it. Shapes (alpaca, sharegpt, OpenAI messages, preference
pairs, Self-Instruct seed tasks) are converted into `tunefold.data.records.Message` lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunefold.data.records import Message
from tunefold.errors import InputError

SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class RawRow:
    location: str
    row: dict[str, Any] | None
    error: str | None = None
    raw: str | None = None


class RowError(ValueError):
    """A row that cannot become a record; the message says which field and why."""


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf_dataset"
        raise InputError(f"{path}: a directory, but not a saved Hugging Face dataset (no dataset_info.json)")
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        supported = ", ".join(sorted(SUFFIX_FORMATS)) + ", or a saved HF dataset directory"
        raise InputError(f"{path}: unsupported format {path.suffix or '(no suffix)'!r}; supported: {supported}")
    return fmt


def read_rows(path: Path, fmt: str, split: str | None = None) -> Iterator[RawRow]:
    if not path.exists():
        raise InputError(f"{path}: source file does not exist")
    readers = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
    if fmt == "hf_dataset":
        yield from _read_hf(path, split)
    else:
        yield from readers[fmt](path)


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            loc = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRow(loc, None, f"invalid UTF-8 at byte {e.start}", raw.decode("utf-8", "replace"))
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield RawRow(loc, None, f"malformed JSON: {e.msg} at column {e.colno}", text.rstrip("\n"))
                continue
            if not isinstance(row, dict):
                yield RawRow(loc, None, f"expected a JSON object, got {type(row).__name__}", text.rstrip("\n"))
                continue
            yield RawRow(loc, row)


def _read_json(path: Path) -> Iterator[RawRow]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: invalid UTF-8 at byte {e.start}") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: malformed JSON: {e.msg} at column {e.colno}") from e
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError(f"{path}: expected a JSON array of rows (or an object holding exactly one array)")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    for i, row in enumerate(data):
        loc = f"{path}:row {i}"
        if isinstance(row, dict):
            yield RawRow(loc, row)
        else:
            yield RawRow(loc, None, f"expected a JSON object, got {type(row).__name__}", json.dumps(row))


def _read_csv(path: Path) -> Iterator[RawRow]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: invalid UTF-8 at byte {e.start}") from e
    except pd.errors.EmptyDataError as e:
        raise InputError(f"{path}: empty CSV file") from e
    except pd.errors.ParserError as e:
        raise InputError(f"{path}: malformed CSV: {e}") from e
    for i, row in enumerate(frame.to_dict(orient="records")):
        # CSV cells are strings; a column holding a JSON list (e.g. `messages`) is decoded.
        decoded = {k: _maybe_json(v) for k, v in row.items()}
        yield RawRow(f"{path}:{i + 2}", decoded)


def _maybe_json(value: str) -> Any:
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: cannot read Parquet: {e}") from e
    for i, row in enumerate(table.to_pylist()):
        yield RawRow(f"{path}:row {i}", row)


def _read_hf(path: Path, split: str | None) -> Iterator[RawRow]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise InputError(f"{path}: dataset has splits {sorted(ds)}; set `split` on this source")
            split = next(iter(ds))
        if split not in ds:
            raise InputError(f"{path}: no split {split!r}; it has {sorted(ds)}")
        ds = ds[split]
    for i, row in enumerate(ds):
        yield RawRow(f"{path}:row {i}", dict(row))


# --- shapes -------------------------------------------------------------------------------------------------

SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "model": "assistant", "bard": "assistant", "bing": "assistant", "system": "system",
}  # fmt: skip
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _text(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)  # OpenAI content parts
    raise RowError(f"{field}: expected a string, got {type(value).__name__}")


def _require(row: dict[str, Any], key: str) -> Any:
    if key not in row or row[key] is None:
        raise RowError(f"missing field {key!r}")
    return row[key]


def _turns(value: Any, field: str, role_key: str, text_key: str, roles: dict[str, str]) -> list[Message]:
    if not isinstance(value, list):
        raise RowError(f"{field}: expected a list of turns, got {type(value).__name__}")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RowError(f"{field}[{i}]: expected an object, got {type(turn).__name__}")
        name = _require(turn, role_key)
        if not isinstance(name, str) or name.lower() not in roles:
            raise RowError(f"{field}[{i}].{role_key}: unknown role name {name!r} (known: {', '.join(roles)})")
        out.append(Message(role=roles[name.lower()], content=_text(_require(turn, text_key), f"{field}[{i}]")))
    return out


def _alpaca(row: dict[str, Any]) -> list[Message]:
    instruction = _text(_require(row, "instruction"), "instruction")
    extra = row.get("input") or ""
    extra = _text(extra, "input")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    msgs = [Message(role="system", content=_text(row["system"], "system"))] if row.get("system") else []
    return [
        *msgs,
        Message(role="user", content=user),
        Message(role="assistant", content=_text(_require(row, "output"), "output")),
    ]


def _final_answer(value: Any, field: str) -> str:
    """`chosen`/`rejected` may be a string or a conversation whose last turn is the answer."""
    if isinstance(value, list):
        turns = _turns(value, field, "role", "content", OPENAI_ROLES)
        if not turns or turns[-1].role != "assistant":
            raise RowError(f"{field}: the last turn must be the assistant's answer")
        return turns[-1].content
    return _text(value, field)


def _preference(row: dict[str, Any]) -> tuple[list[Message], str]:
    prompt = _require(row, "prompt")
    if isinstance(prompt, list):
        msgs = _turns(prompt, "prompt", "role", "content", OPENAI_ROLES)
    else:
        msgs = [Message(role="user", content=_text(prompt, "prompt"))]
    chosen = _final_answer(_require(row, "chosen"), "chosen")
    rejected = _final_answer(_require(row, "rejected"), "rejected")
    return [*msgs, Message(role="assistant", content=chosen)], rejected


SHAPES = ("messages", "sharegpt", "preference", "self_instruct", "alpaca")


def detect_shape(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "chosen" in row or "rejected" in row:
        return "preference"
    if "instances" in row and "instruction" in row:
        return "self_instruct"
    if "instruction" in row:
        return "alpaca"
    keys = ", ".join(sorted(map(str, row))) or "none"
    raise RowError(
        f"unrecognised row shape (keys: {keys}); expected `messages`, `conversations`, "
        "`prompt/chosen/rejected`, `instruction/input/output` or `instruction/instances`"
    )


def convert_row(row: dict[str, Any]) -> tuple[str, list[tuple[list[Message], str | None]]]:
    """Return the row's shape and its conversations as (messages, rejected) pairs (seed tasks may give several)."""
    shape = detect_shape(row)
    if shape == "messages":
        return shape, [(_turns(row["messages"], "messages", "role", "content", OPENAI_ROLES), None)]
    if shape == "sharegpt":
        return shape, [(_turns(row["conversations"], "conversations", "from", "value", SHAREGPT_ROLES), None)]
    if shape == "preference":
        msgs, rejected = _preference(row)
        return shape, [(msgs, rejected)]
    if shape == "self_instruct":
        instances = row["instances"]
        if not isinstance(instances, list) or not instances:
            raise RowError("instances: expected a non-empty list of {input, output}")
        out = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise RowError(f"instances[{i}]: expected an object")
            out.append((_alpaca({"instruction": row["instruction"], **inst}), None))
        return shape, out
    return shape, [(_alpaca(row), None)]
