"""The persistent LLM response cache: answers on disk (SQLite), keyed by `request_key` (backend,
model, messages and sampling parameters), safe for threads and processes; every answer is
committed as soon as it arrives, so an interrupted run loses nothing that was paid for.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .chat import ChatRequest, ChatResult

from ..formats import RESPONSE_CACHE_FILE


def request_key(backend_identity: str, model: str, request: ChatRequest) -> str:
    """The cache key: a SHA-256 of the backend, the model, the messages and the sampling parameters."""
    payload = {"backend": backend_identity, "model": model, "messages": request.messages, "sampling": request.sampling()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def default_cache_path() -> Path:
    """`$HF_BAE_CACHE/llm_responses.sqlite`, else `~/.cache/hf_bae/llm_responses.sqlite`."""
    root = os.environ.get("HF_BAE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_bae")
    return Path(root) / RESPONSE_CACHE_FILE


class ResponseCache:
    """LLM answers on disk (SQLite, WAL mode), keyed by `request_key`.

    One connection per thread; SQLite's locking makes concurrent writers in several threads or
    processes safe. Each answer is committed at once. Only successful answers are stored, so a
    rerun retries what failed. The request's messages are stored beside the answer for auditing;
    no credential is ever part of a request.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ValueError(f"Cannot keep the response cache at {self.path}: a parent of it is a file, not a folder. "
                             "Give another --cache path, or --no_cache.") from None
        self._local = threading.local()
        try:
            with self._connect() as conn:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, backend TEXT, model TEXT, "
                    "request TEXT, text TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
                )
        except sqlite3.DatabaseError as err:  # not a database, a folder, or unwritable
            raise ValueError(f"{self.path} cannot be used as the response cache ({err}): give another --cache path "
                             "(a new file is created), or --no_cache.") from None

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._connect().execute(
            "SELECT text, prompt_tokens, completion_tokens FROM responses WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return {"text": row[0], "prompt_tokens": row[1], "completion_tokens": row[2]}

    def put(self, key: str, backend: str, model: str, request: ChatRequest, result: ChatResult) -> None:
        with self._connect() as conn:  # commits
            conn.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, backend, model, json.dumps({"messages": request.messages, "sampling": request.sampling()}),
                 result.text, result.prompt_tokens, result.completion_tokens, time.time()),
            )

    def delete(self, keys: list[str]) -> int:
        """Remove the answers under `keys` (answers a run found unusable); returns how many were there."""
        with self._connect() as conn:  # commits
            return sum(conn.execute("DELETE FROM responses WHERE key = ?", (key,)).rowcount for key in keys)

    def __contains__(self, key: str) -> bool:
        return self._connect().execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
