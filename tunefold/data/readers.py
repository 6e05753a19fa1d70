"""Reading instruction data files row by row, each row with the `file:line` it came from.

Readers yield one `RawRow` per source row: its parsed object, or the reason it could not be read. One bad row
never costs the rows around it, and no row-level problem (bad bytes, lone surrogates, deep nesting, absurd
sizes, anything `json` or `csv` raises) escapes as an exception; only what makes a whole file unreadable (a
missing file, a wrong compression, a `.json` file whose rows cannot be told apart) is an `InputError`.
Compressed files (`.gz`, `.bz2`, `.xz`, `.zst`) are read by suffix.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import json
import lzma
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tunefold.errors import InputError

SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
_MAGIC = {"gzip": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd"}
_EXCERPT = 2000  # characters of an oversized row kept in rejected.jsonl
_JSON_WS = " \t\r\n"  # the only whitespace JSON allows between values


@dataclass(frozen=True)
class RawRow:
    location: str
    row: dict[str, Any] | None
    error: str | None = None
    raw: str | None = None


def compression_of(path: Path) -> str | None:
    return None if path.is_dir() else COMPRESSIONS.get(path.suffix.lower())


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf_dataset"
        raise InputError(f"{path}: a directory, but not a saved Hugging Face dataset (no dataset_info.json)")
    inner = path.with_suffix("") if compression_of(path) else path
    fmt = SUFFIX_FORMATS.get(inner.suffix.lower())
    if fmt is None:
        supported = ", ".join(sorted(SUFFIX_FORMATS))
        packed = ", ".join(sorted(COMPRESSIONS))
        raise InputError(
            f"{path}: unsupported format {inner.suffix or '(no suffix)'!r}; supported: {supported} (also "
            f"compressed: {packed}), or a saved HF dataset directory; or set `format` on this source"
        )
    return fmt


def read_rows(
    path: Path, fmt: str, split: str | None = None, max_row_bytes: int = 16 << 20, json_columns: tuple[str, ...] = ()
) -> Iterator[RawRow]:
    """Every row of one source. `json_columns` names the CSV columns that hold JSON (all other cells are text)."""
    if not path.exists():
        raise InputError(f"{path}: source file does not exist")
    if fmt == "hf_dataset":
        yield from _read_hf(path, split)
        return
    compression = _check_compression(path)
    if fmt == "parquet":
        if compression:
            raise InputError(f"{path}: Parquet compresses its own pages; decompress the {compression} file first")
        yield from _read_parquet(path)
        return
    with _open(path, compression) as f:
        if fmt == "jsonl":
            yield from _read_jsonl(f, path, max_row_bytes)
        elif fmt == "json":
            yield from _read_json(f, path, max_row_bytes)
        else:
            yield from _read_csv(f, path, max_row_bytes, json_columns)


def _check_compression(path: Path) -> str | None:
    """The compression the name promises, checked against the file's first bytes either way."""
    named = compression_of(path)
    with path.open("rb") as f:
        head = f.read(6)
    found = next((name for name, magic in _MAGIC.items() if head.startswith(magic)), None)
    if found == "bz2" and not (head[3:4].isdigit() and head[3:4] != b"0"):
        found = None  # bz2 is "BZh" and a block size 1-9, not any text that starts with "BZh"
    if named and found != named:
        raise InputError(f"{path}: named {path.suffix} but is not {named}-compressed data")
    if found and not named:
        suffix = next(s for s, name in COMPRESSIONS.items() if name == found)
        raise InputError(
            f"{path}: the file is {found}-compressed but its name does not say so; name it "
            f"{path.name}{suffix} so it is decompressed (format {path.suffix or 'auto'} then applies to its content)"
        )
    return named


@contextlib.contextmanager
def _open(path: Path, compression: str | None) -> Iterator[IO[bytes]]:
    if compression is None:
        with path.open("rb") as f:
            yield f
    elif compression == "gzip":
        with gzip.open(path, "rb") as f:
            yield f
    elif compression == "bz2":
        with bz2.open(path, "rb") as f:
            yield f
    elif compression == "xz":
        with lzma.open(path, "rb") as f:
            yield f
    else:
        import zstandard

        with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            yield io.BufferedReader(reader)  # type: ignore[arg-type]


def _lines(f: IO[bytes], path: Path, max_row_bytes: int) -> Iterator[tuple[int, bytes | None, str | None]]:
    """Physical lines with their numbers; an over-long line is skipped (its number and size reported), and a
    compressed stream that breaks off ends the file with one error at the line where it broke."""
    lineno = 0
    while True:
        try:
            line = f.readline(max_row_bytes + 1)
            if len(line) > max_row_bytes and not line.endswith(b"\n"):
                size = len(line)
                while chunk := f.readline(1 << 20):
                    size += len(chunk)
                    if chunk.endswith(b"\n"):
                        break
                lineno += 1
                yield lineno, None, f"row of {size} bytes is over ingest.max_row_bytes ({max_row_bytes})"
                continue
        except Exception as e:  # gzip/bz2/lzma/zstd raise their own types for a corrupt or truncated stream
            yield lineno + 1, None, f"the compressed file cannot be read from here on: {type(e).__name__}: {e}"
            return
        if not line:
            return
        lineno += 1
        yield lineno, line, None


def _read_jsonl(f: IO[bytes], path: Path, max_row_bytes: int) -> Iterator[RawRow]:
    for lineno, raw, error in _lines(f, path, max_row_bytes):
        loc = f"{path}:{lineno}"
        if raw is None:
            yield RawRow(loc, None, error)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield RawRow(loc, None, f"invalid UTF-8 at byte {e.start}", raw.decode("utf-8", "replace").rstrip("\n"))
            continue
        if lineno == 1:
            text = text.removeprefix("\ufeff")
        if text.strip(_JSON_WS):  # a line of other characters (form feed, no-break space) is a row, and malformed
            yield _parse_object(text.rstrip("\r\n"), loc)


def _parse_object(text: str, loc: str) -> RawRow:
    """One JSON object, or the reason it is not one (the raw text kept either way)."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return RawRow(loc, None, f"malformed JSON: {e.msg} (column {e.colno})", text)
    except RecursionError:
        return RawRow(loc, None, "malformed JSON: nested too deeply to read", _excerpt(text))
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        return RawRow(loc, None, f"malformed JSON: {e}", _excerpt(text))
    if not isinstance(row, dict):
        return RawRow(loc, None, f"expected a JSON object, got {type(row).__name__}", text)
    return _checked(loc, row, text)


def _checked(loc: str, row: dict[str, Any], raw: str) -> RawRow:
    """A parsed row whose text is all valid Unicode (a lone surrogate such as "\\ud83d" cannot be written as
    UTF-8 anywhere downstream), else the rejection naming the field."""
    stack: list[tuple[str, Any]] = [("", row)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and not _encodable(k):
                    return RawRow(loc, None, f"key {_show(k)} at {where or 'top level'} is not valid Unicode", raw)
                stack.append((f"{where}.{k}" if where else str(k), v))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str) and not _encodable(value):
            bad = next(c for c in value if 0xD800 <= ord(c) <= 0xDFFF)
            if 0xDC80 <= ord(bad) <= 0xDCFF:  # what decoding with surrogateescape makes of a byte that is not UTF-8
                why = f"invalid UTF-8 (byte 0x{ord(bad) - 0xDC00:02x}, or the escape {bad!a})"
            else:
                why = f"a lone surrogate ({bad!a}) is not valid Unicode text"
            return RawRow(loc, None, f"{where or 'value'}: {why}", raw)
    return RawRow(loc, row, raw=raw)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(text: str) -> str:
    return ascii(text[:40])


def _excerpt(text: str) -> str:
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + f"… ({len(text)} characters)"


# --- one JSON document holding the rows ---------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.S)


def _read_json(f: IO[bytes], path: Path, max_row_bytes: int) -> Iterator[RawRow]:
    """A JSON array of row objects (or an object holding exactly one such array). Rows are read one by one, so
    each gets its own line number and a bad row is rejected alone."""
    try:
        data = f.read()
    except Exception as e:  # a compressed stream that is corrupt or cut off: no row of a JSON document is usable
        raise InputError(f"{path}: the compressed file cannot be read: {type(e).__name__}: {e}") from e
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    doc = _JsonText(text, path)
    start = doc.array_start()
    pos = doc.skip_ws(start + 1)
    if text.startswith("]", pos):
        return
    while True:
        loc = f"{path}:{doc.line(pos)}"
        end, row = doc.value(pos)
        chunk = text[pos:end]
        if end - pos > max_row_bytes:
            yield RawRow(
                loc, None, f"row of {end - pos} characters is over ingest.max_row_bytes", _excerpt(_shown(chunk))
            )
        elif isinstance(row, _Bad):
            yield RawRow(loc, None, row.reason, _excerpt(_shown(chunk)))
        elif not isinstance(row, dict):
            yield RawRow(loc, None, f"expected a JSON object, got {type(row).__name__}", _excerpt(_shown(chunk)))
        else:
            yield _checked(loc, row, _shown(chunk))
        pos = doc.skip_ws(end)
        if text.startswith(",", pos):
            pos = doc.skip_ws(pos + 1)
        elif text.startswith("]", pos):
            return
        else:
            raise InputError(f"{path}:{doc.line(pos)}: malformed JSON: expected ',' or ']' after a row")


@dataclass(frozen=True)
class _Bad:
    reason: str


class _JsonText:
    """Positions and line numbers in one JSON document, and values read one at a time."""

    def __init__(self, text: str, path: Path) -> None:
        self.text, self.path = text, path
        self.decoder = json.JSONDecoder()
        self._line_pos, self._line = 0, 1

    def line(self, pos: int) -> int:
        if pos < self._line_pos:
            self._line_pos, self._line = 0, 1
        self._line += self.text.count("\n", self._line_pos, pos)
        self._line_pos = pos
        return self._line

    def skip_ws(self, pos: int) -> int:
        match = _WS.match(self.text, pos)
        assert match is not None
        return match.end()

    def fail(self, pos: int, what: str) -> InputError:
        return InputError(f"{self.path}:{self.line(pos)}: malformed JSON: {what}")

    def value(self, pos: int) -> tuple[int, Any]:
        """The end of the value at `pos` and the value, or `_Bad` with the reason when it does not parse (its
        end found by matching brackets outside strings, so the next row can still be read)."""
        try:
            row, end = self.decoder.raw_decode(self.text, pos)
            return end, row
        except json.JSONDecodeError as e:
            reason = f"malformed JSON: {e.msg} (line {self.line(e.pos)}, column {e.colno})"
        except RecursionError:
            reason = "malformed JSON: nested too deeply to read"
        except ValueError as e:
            reason = f"malformed JSON: {e}"
        end = self._value_end(pos)
        if end is None:
            raise self.fail(pos, f"{reason.removeprefix('malformed JSON: ')}; the rows after it cannot be told apart")
        return end, _Bad(reason)

    def _value_end(self, pos: int) -> int | None:
        depth = 0
        for m in _TOKEN.finditer(self.text, pos):
            tok = m.group()
            if tok[0] == '"':
                if depth == 0 and m.start() != pos:
                    return None
                continue
            if tok in "[{":
                depth += 1
            elif tok in "]}" and depth > 0:
                depth -= 1
                if depth == 0:
                    return m.end()
            elif depth == 0:  # ',' or a closing bracket after a scalar
                return m.start()
        return None

    def array_start(self) -> int:
        pos = self.skip_ws(0)
        if self.text.startswith("[", pos):
            return pos
        if not self.text.startswith("{", pos):
            found = "an empty file" if pos >= len(self.text) else f"{self.text[pos : pos + 20]!r}"
            raise self.fail(pos, f"expected a JSON array of rows (or an object holding one), found {found}")
        arrays: list[tuple[str, int]] = []
        pos = self.skip_ws(pos + 1)
        while not self.text.startswith("}", pos):
            end, key = self.value(pos)
            if not isinstance(key, str):
                raise self.fail(pos, "expected a key")
            pos = self.skip_ws(end)
            if not self.text.startswith(":", pos):
                raise self.fail(pos, "expected ':' after a key")
            pos = self.skip_ws(pos + 1)
            if self.text.startswith("[", pos):
                arrays.append((key, pos))
            end, _ = self.value(pos)
            pos = self.skip_ws(end)
            if self.text.startswith(",", pos):
                pos = self.skip_ws(pos + 1)
            elif not self.text.startswith("}", pos):
                raise self.fail(pos, "expected ',' or '}'")
        if len(arrays) != 1:
            keys = ", ".join(k for k, _ in arrays) or "none"
            raise InputError(
                f"{self.path}: expected a JSON array of rows, or an object holding exactly one array "
                f"(arrays found under: {keys})"
            )
        return arrays[0][1]


# --- CSV ----------------------------------------------------------------------------------------------------


def _read_csv(f: IO[bytes], path: Path, max_row_bytes: int, json_columns: tuple[str, ...]) -> Iterator[RawRow]:
    """Cells are text; only `json_columns` are parsed as JSON. A row's location is its first physical line, also
    after quoted cells that span lines; a bad byte, a wrong number of cells or a malformed quote rejects that
    row alone."""
    consumed: list[str] = []
    problems: dict[int, str] = {}

    def physical() -> Iterator[str]:
        for lineno, raw, error in _lines(f, path, max_row_bytes):
            if raw is None:
                problems[lineno] = error or "unreadable line"
                consumed.append("\n")
                yield "\n"
                continue
            text = raw.decode("utf-8", "surrogateescape")
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            consumed.append(text)
            yield text

    csv.field_size_limit(max_row_bytes)
    reader = csv.reader(physical(), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise InputError(f"{path}:1: malformed CSV header: {e}") from e
    if 1 in problems:
        raise InputError(f"{path}:1: the header cannot be read: {problems[1]}")
    if not header:
        raise InputError(f"{path}:1: the first line is empty; a CSV file starts with its header row")
    if any(_has_bad_bytes(h) for h in header):
        raise InputError(f"{path}:1: the header is not valid UTF-8")
    if len(set(header)) != len(header) or any(not h.strip() for h in header):
        raise InputError(f"{path}:1: the header needs distinct, non-empty column names (got {header})")
    missing = [c for c in json_columns if c not in header]
    if missing:
        raise InputError(f"{path}: json_columns {missing} are not columns of the file (columns: {header})")
    done = reader.line_num
    consumed.clear()
    while True:
        try:
            cells = next(reader)
            error = None
        except StopIteration:
            return
        except csv.Error as e:
            cells, error = [], f"malformed CSV: {e}"
        first, done = done + 1, reader.line_num
        raw, consumed[:] = "".join(consumed), []
        loc = f"{path}:{first}"
        broken = next((problems.pop(n) for n in range(first, done + 1) if n in problems), None)
        if error or broken:
            yield RawRow(loc, None, broken or error, _excerpt(_shown(raw)))
            continue
        if not cells:
            continue  # a blank line
        yield _csv_row(loc, header, cells, raw, json_columns)


def _has_bad_bytes(text: str) -> bool:
    return any(0xDC80 <= ord(c) <= 0xDCFF for c in text)


def _shown(raw: str) -> str:
    """Text decoded with surrogateescape, printable: undecodable bytes as U+FFFD."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace").rstrip("\r\n")


def _csv_row(loc: str, header: list[str], cells: list[str], raw: str, json_columns: tuple[str, ...]) -> RawRow:
    shown = _shown(raw)
    if len(cells) != len(header):
        which = f"missing {header[len(cells) :]}" if len(cells) < len(header) else "extra cells"
        return RawRow(loc, None, f"{len(cells)} cells but the header has {len(header)} ({which})", shown)
    for col, cell in zip(header, cells, strict=True):
        if _has_bad_bytes(cell):
            bad = next(c for c in cell if 0xDC80 <= ord(c) <= 0xDCFF)
            return RawRow(loc, None, f"{col}: invalid UTF-8 (byte 0x{ord(bad) - 0xDC00:02x})", shown)
    row: dict[str, Any] = dict(zip(header, cells, strict=True))
    for col in json_columns:
        try:
            row[col] = json.loads(row[col])
        except (ValueError, RecursionError) as e:
            return RawRow(loc, None, f"{col}: not JSON ({type(e).__name__}: {str(e)[:200]})", shown)
    return _checked(loc, row, shown)


# --- columnar ------------------------------------------------------------------------------------------------


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: cannot read Parquet: {e}") from e
    for i, row in enumerate(table.to_pylist()):
        yield _checked(f"{path}:row {i}", row, _dump(row))


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
        yield _checked(f"{path}:row {i}", dict(row), _dump(dict(row)))


def _dump(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=True, default=str)
