"""A persistent response cache: SQLite, one committed row per finished request.

Each reply is committed as soon as it arrives, so a run killed halfway keeps everything it finished and a
re-run sends only what is missing. Only deterministic requests are stored (temperature 0, or an explicit seed).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


def request_key(model_id: str, body: dict[str, Any]) -> str:
    """Hash of (endpoint model id, messages, sampling params, response format): everything that shapes the reply."""
    canonical = json.dumps({"model": model_id, **body}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_deterministic(body: dict[str, Any]) -> bool:
    return body.get("temperature", 1.0) == 0 or body.get("seed") is not None


class ResponseCache:
    def __init__(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "responses.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, value TEXT, created REAL)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, model: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                (key, model, json.dumps(value, ensure_ascii=False), time.time()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
