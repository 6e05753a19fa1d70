"""A report as blocks (headings, paragraphs, tables, figures) rendered to both Markdown and HTML.

Built once, rendered twice: the Markdown file and the HTML page say the same thing, and the HTML gets real
`<table>`s and inline images rather than Markdown shown as text.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

Cell = str | int | float | None


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str
    kind: str = ""  # "warning": shown as a flagged box in HTML and prefixed in Markdown


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[Cell]]


@dataclass(frozen=True)
class Figure:
    name: str
    png: bytes
    caption: str


@dataclass
class Document:
    title: str
    blocks: list[Heading | Para | Table | Figure] = field(default_factory=list)

    def add(self, *blocks: Heading | Para | Table | Figure) -> None:
        self.blocks.extend(blocks)

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if isinstance(b, Heading):
                out += ["#" * b.level + " " + b.text, ""]
            elif isinstance(b, Para):
                out += [("> **Warning:** " if b.kind == "warning" else "") + b.text, ""]
            elif isinstance(b, Table):
                out += ["| " + " | ".join(b.header) + " |", "|" + "---|" * len(b.header)]
                out += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in row) + " |" for row in b.rows]
                out.append("")
            else:
                out += [f"![{b.caption}]({b.name})", ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        for b in self.blocks:
            if isinstance(b, Heading):
                parts.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
            elif isinstance(b, Para):
                cls = ' class="warning"' if b.kind == "warning" else ""
                parts.append(f"<p{cls}>{html.escape(b.text)}</p>")
            elif isinstance(b, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in b.rows
                )
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                data = base64.b64encode(b.png).decode()
                parts.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.caption)}">'
                    f"<figcaption>{html.escape(b.caption)}</figcaption></figure>"
                )
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #bbb;padding:.25em .6em;"
            "text-align:left}th{background:#eee}figure{display:inline-block;margin:.5em}img{max-width:520px}"
            ".warning{background:#fff3cd;border-left:4px solid #d39e00;padding:.5em}"
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{style}</style></head><body>"
            + "".join(parts)
            + "</body></html>"
        )


def _cell(c: Any) -> str:
    if c is None:
        return "n/a"
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 1 else f"{c:.2f}"
    return str(c)
