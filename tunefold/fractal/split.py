"""Sentence splitter for LLM answers (prose mixed with markdown and code).

Rules, in order:
1. Fenced code blocks (```` ``` ```` or `~~~`, up to the matching fence or the end of the text) are one unit each:
   a program is judged as a whole, and splitting it at `.` would cut statements apart.
2. Markdown headers (`# Title`) are one unit each.
3. Markdown list items (`-`, `*`, `+`, `•`, `1.`, `1)` at the start of a line, any indentation) are one unit each,
   with their indented continuation lines; a nested item is its own unit.
4. Tables (consecutive lines starting with `|`) are one unit.
5. Everything else is prose: lines up to a blank line form a paragraph, cut into sentences after `.`, `!` or `?`
   (and any closing quotes or brackets) followed by whitespace and a character that is not a lower-case letter.
   A `.` does not end a sentence after a known abbreviation (Dr., e.g., i.e., etc., vs., ...), a single capital
   initial (J. R. R. Tolkien) or a dotted acronym (U.S., U.K.); decimals (3.14) and versions (v1.2) never split,
   as no whitespace follows their dot. A newline inside a paragraph is not a boundary on its own.

Known limitation: an abbreviation that really ends a sentence ("moved to the U.S. Then ...") is not split.
Units are returned as character spans of the original text, so a caller can cut the text at a unit's start and
keep its formatting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ABBREVIATIONS = frozenset({
    "mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "mt.", "vs.", "etc.", "e.g.", "i.e.", "cf.", "al.",
    "approx.", "fig.", "figs.", "vol.", "ch.", "sec.", "eq.", "inc.", "ltd.", "co.", "corp.", "dept.",
    "est.", "jan.", "feb.", "mar.", "apr.", "jun.", "jul.", "aug.", "sep.", "sept.", "oct.", "nov.", "dec.", "a.m.",
    "p.m.", "u.s.", "u.k.", "u.n.", "e.u.", "ph.d.", "b.sc.", "m.sc.", "lt.", "col.", "gen.", "gov.", "sen.", "rep.",
    "ave.", "blvd.", "min.", "max.", "resp.", "viz."
})  # fmt: skip
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADER = re.compile(r"^\s{0,3}#{1,6}\s")
_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+\S")
_TABLE = re.compile(r"^\s*\|")
_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+")
_INITIAL = re.compile(r"^[A-Z]\.$")
_ACRONYM = re.compile(r"^(?:[A-Za-z]\.){2,}$")


@dataclass(frozen=True)
class Span:
    """One unit (sentence, list item, code block, header or table): its text and where it sits in the input."""

    start: int
    end: int
    text: str
    kind: str


def split_spans(text: str) -> list[Span]:
    """The units of `text` in order, stripped of surrounding whitespace; none for an empty or blank text."""
    spans: list[Span] = []
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    i = 0
    para_start: int | None = None

    def flush(end: int) -> None:
        nonlocal para_start
        if para_start is not None:
            spans.extend(_sentences(text, offsets[para_start], offsets[end]))
            para_start = None

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush(i)
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            flush(i)
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith(fence.group(1)):
                j += 1
            j = min(j + 1, len(lines))
            spans.append(_span(text, offsets[i], offsets[j], "code"))
            i = j
        elif _HEADER.match(line):
            flush(i)
            spans.append(_span(text, offsets[i], offsets[i + 1], "header"))
            i += 1
        elif _ITEM.match(line):
            flush(i)
            j = i + 1
            indent = len(line) - len(line.lstrip())
            while j < len(lines) and _continues_item(lines[j], indent):
                j += 1
            spans.append(_span(text, offsets[i], offsets[j], "item"))
            i = j
        elif _TABLE.match(line):
            flush(i)
            j = i + 1
            while j < len(lines) and _TABLE.match(lines[j]):
                j += 1
            spans.append(_span(text, offsets[i], offsets[j], "table"))
            i = j
        else:
            if para_start is None:
                para_start = i
            i += 1
    flush(len(lines))
    return spans


def split_sentences(text: str) -> list[str]:
    """The units of `text` as strings (see the module docstring for the rules)."""
    return [s.text for s in split_spans(text)]


def _continues_item(line: str, indent: int) -> bool:
    """An indented, non-blank line that is not itself an item, a fence or a header continues the item above."""
    if not line.strip() or _ITEM.match(line) or _FENCE.match(line) or _HEADER.match(line):
        return False
    return len(line) - len(line.lstrip()) > indent


def _span(text: str, start: int, end: int, kind: str) -> Span:
    chunk = text[start:end]
    lead = len(chunk) - len(chunk.lstrip())
    body = chunk.strip()
    return Span(start + lead, start + lead + len(body), body, kind)


def _sentences(text: str, start: int, end: int) -> list[Span]:
    out = []
    cut = start
    for m in _END.finditer(text, start, end):
        nxt = text[m.end()] if m.end() < end else ""
        if nxt.islower() or (nxt and not _ends_sentence(text, cut, m.start(), m.group())):
            continue
        out.append(_span(text, cut, m.end(), "sentence"))
        cut = m.end()
    if text[cut:end].strip():
        out.append(_span(text, cut, end, "sentence"))
    return [s for s in out if s.text]


def _ends_sentence(text: str, start: int, punct_at: int, punct: str) -> bool:
    """False when the lone `.` at `punct_at` belongs to an abbreviation, an initial or a dotted acronym."""
    if not punct.startswith(".") or punct.startswith(".."):
        return True
    words = text[start : punct_at + 1].split()
    word = words[-1].lstrip("(\"'“‘[") if words else ""
    return not (word.lower() in ABBREVIATIONS or _INITIAL.match(word) or _ACRONYM.match(word))
