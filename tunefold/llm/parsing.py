"""Parsers for judge replies. A reply that does not parse is a typed failure, never a made-up score."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

_RATING_STRICT = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_LOOSE = re.compile(r"\[(\d+\.?\d*)\]")
_VERDICT = re.compile(r"\[\[([ABC])\]\]")


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """A value, or why there is none. `raw` keeps the reply so a failure can be inspected."""

    value: T | None
    failure: str | None = None
    raw: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def parse_rating(text: str | None, low: float = 1, high: float = 10) -> Parsed[Any]:
    """MT-Bench single-answer format: the first `[[x]]`, else the first `[x]`; out of [low, high] is a failure."""
    if not text:
        return Parsed(None, "empty reply", text)
    match = _RATING_STRICT.search(text) or _RATING_LOOSE.search(text)
    if not match:
        return Parsed(None, "no [[rating]] in reply", text)
    value = float(match.group(1))
    if not low <= value <= high:
        return Parsed(None, f"rating {value:g} outside {low:g}..{high:g}", text)
    return Parsed(value, None, text)


def parse_verdict(text: str | None) -> Parsed[Any]:
    """MT-Bench pairwise format: `[[A]]`, `[[B]]` or `[[C]]` (tie). Several different verdicts: a failure."""
    if not text:
        return Parsed(None, "empty reply", text)
    found = set(_VERDICT.findall(text))
    if len(found) != 1:
        return Parsed(None, "no [[A]]/[[B]]/[[C]] verdict" if not found else "conflicting verdicts", text)
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
        return Parsed(None, "empty reply", text)
    try:
        return Parsed(schema.model_validate_json(text), None, text)
    except ValidationError:
        pass
    obj = last_json_object(text)
    if obj is None:
        return Parsed(None, "no JSON object in reply", text)
    try:
        return Parsed(schema.model_validate(obj), None, text)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors())
        return Parsed(None, f"JSON does not match {schema.__name__}: {problems}", text)
