"""Parsers for judge replies. A reply that does not parse is a typed failure, never a made-up score."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)
FailureKind = Literal["call_failed", "truncated", "empty", "unparseable", "out_of_range"]

_RATING_STRICT = re.compile(r"\[\[(\d+\.?\d*)\]\]")
# "Rating: [7]" (a judge that dropped one bracket pair); a bare `[7]` could be `arr[0]` or a citation, so the
# word must come first.
_RATING_LABELLED = re.compile(r"rating\W{0,3}\[(\d+\.?\d*)\]", re.IGNORECASE)
_VERDICT = re.compile(r"\[\[([ABC])\]\]")
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}  # pydantic's range error types


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """A value, or why there is none (`failure`, and its `kind` for counting). `raw` keeps the reply so a
    failure can be inspected; `retries` counts sampled re-asks before this outcome."""

    value: T | None
    failure: str | None = None
    raw: str | None = None
    kind: FailureKind | None = None
    retries: int = 0

    @property
    def ok(self) -> bool:
        return self.failure is None


def failed(kind: FailureKind, why: str, raw: str | None = None) -> Parsed[Any]:
    return Parsed(None, why, raw, kind)


def parse_rating(text: str | None, low: float = 1, high: float = 10) -> Parsed[Any]:
    """MT-Bench single-answer format: the first `[[x]]`, else a `Rating: [x]`; out of [low, high] is a failure."""
    if not text:
        return failed("empty", "empty reply", text)
    match = _RATING_STRICT.search(text) or _RATING_LABELLED.search(text)
    if not match:
        return failed("unparseable", "no [[rating]] in reply", text)
    return in_range(float(match.group(1)), low, high, text)


def in_range(value: float, low: float, high: float, raw: str | None) -> Parsed[Any]:
    """A rating outside the scale is its own failure kind: it says the judge ignored the rubric, not the format."""
    if not low <= value <= high:
        return failed("out_of_range", f"rating {value:g} outside {low:g}..{high:g}", raw)
    return Parsed(value, None, raw)


def parse_verdict(text: str | None) -> Parsed[Any]:
    """MT-Bench pairwise format: `[[A]]`, `[[B]]` or `[[C]]` (tie). Several different verdicts: a failure."""
    if not text:
        return failed("empty", "empty reply", text)
    found = set(_VERDICT.findall(text))
    if len(found) != 1:
        return failed("unparseable", "no [[A]]/[[B]]/[[C]] verdict" if not found else "conflicting verdicts", text)
    verdict: Literal["A", "B", "C"] = found.pop()  # type: ignore[assignment]
    return Parsed(verdict, None, text)


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last `{...}` in a reply that parses as a JSON object (judges often write prose before it)."""
    decoder = json.JSONDecoder()
    found = None
    for start in (i for i, c in enumerate(text) if c == "{"):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            found = obj
    return found


def parse_model(text: str | None, schema: type[T]) -> Parsed[T]:
    """Validate a reply into `schema`: the whole reply as JSON, else its last JSON object."""
    if not text:
        return failed("empty", "empty reply", text)
    try:
        return Parsed(schema.model_validate_json(text), None, text)
    except ValidationError:
        pass
    obj = last_json_object(text)
    if obj is None:
        return failed("unparseable", "no JSON object in reply", text)
    try:
        return Parsed(schema.model_validate(obj), None, text)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors())
        kind: FailureKind = "out_of_range" if all(err["type"] in _BOUNDS for err in e.errors()) else "unparseable"
        return failed(kind, f"JSON does not match {schema.__name__}: {problems}", text)
