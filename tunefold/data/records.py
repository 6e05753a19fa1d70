"""The one record schema every stage reads and writes.

A record is a conversation: an optional system turn, then user/assistant turns, ending with the assistant.
Preference data carries `rejected`, an alternative final assistant turn (the last message is the chosen one).
`id` is a hash of the content, so the same conversation gets the same id in every run and every source.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunefold.errors import InputError

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    messages: list[Message]
    source: str = Field(description="where the row came from: 'path:line' (or 'path:row N')")
    rejected: str | None = Field(default=None, description="dispreferred final assistant turn, for DPO")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def prompt(self) -> list[Message]:
        """Every turn before the final assistant answer."""
        return self.messages[:-1]

    @property
    def response(self) -> str:
        return self.messages[-1].content

    @property
    def instruction(self) -> str:
        """The last user turn: what an answer is rated against."""
        return next((m.content for m in reversed(self.prompt) if m.role == "user"), "")

    @property
    def source_name(self) -> str:
        """The source's name given in `ingest`, else the file it was read from."""
        return str(self.metadata.get("source_name") or self.source.rsplit(":", 1)[0])


def _canonical(messages: list[Message], rejected: str | None) -> str:
    body = {"messages": [[m.role, m.content] for m in messages], "rejected": rejected}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def content_id(messages: list[Message], rejected: str | None = None) -> str:
    """Stable id: the first 16 hex digits of the SHA-256 of the canonical content."""
    return hashlib.sha256(_canonical(messages, rejected).encode("utf-8")).hexdigest()[:16]


_WS = re.compile(r"\s+")


def normalized_key(messages: list[Message], rejected: str | None = None) -> str:
    """Key under which rows differing only in whitespace or letter case count as duplicates."""
    norm = [Message(role=m.role, content=_WS.sub(" ", m.content).strip().casefold()) for m in messages]
    rej = None if rejected is None else _WS.sub(" ", rejected).strip().casefold()
    return content_id(norm, rej)


def make_record(
    messages: list[Message], source: str, rejected: str | None = None, metadata: dict[str, Any] | None = None
) -> Record:
    return Record(
        id=content_id(messages, rejected),
        messages=messages,
        source=source,
        rejected=rejected,
        metadata=metadata or {},
    )


def with_response(record: Record, text: str, **metadata: Any) -> Record:
    """The record with a new final answer: a new content id, the original id kept as `parent_id` for lineage."""
    messages = [*record.prompt, Message(role="assistant", content=text)]
    meta = record.metadata | {"parent_id": record.metadata.get("parent_id", record.id)} | metadata
    return make_record(messages, record.source, record.rejected, meta)


def read_records(path: str | Path, allow_empty: bool = False, purpose: str = "work on") -> list[Record]:
    """A records JSONL written by a stage; a missing or (unless allowed) empty file is a clear error."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"records file {path} does not exist (did the stage that writes it run?)")
    with path.open(encoding="utf-8") as f:
        records = [Record.model_validate_json(line) for line in f if line.strip()]
    if not records and not allow_empty:
        raise InputError(f"records file {path} is empty: nothing to {purpose}")
    return records
