"""The job table: an embedded SQLite database of uploads and their results.

A job is one uploaded scan. Its row moves ``queued -> running -> done | failed``; the result
(JSON) is written into the row. Jobs that were still queued or running when the server
stopped are marked failed at start-up (:meth:`JobStore.fail_unfinished`).
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from ..atomic import jsonable
from .storage import FILE_MODE

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
INTERRUPTED = "interrupted by a server restart before it finished; upload the scan again"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    stage TEXT,
    kind TEXT,
    n_files INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    result TEXT
)"""


class JobStore:
    """The job table. Every call opens its own short connection, so threads never share one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
        finally:
            db.close()
        # SQLite gives its -wal and -shm files the database's mode.
        os.chmod(self.path, FILE_MODE)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        db = self._connect()
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def create(self, kind: str, n_files: int) -> str:
        job_id = uuid.uuid4().hex
        self._run("INSERT INTO jobs (id, status, stage, kind, n_files, created) "
                  "VALUES (?, ?, ?, ?, ?, ?)", (job_id, QUEUED, "waiting for a worker", kind,
                                                n_files, time.time()))
        return job_id

    def update(self, job_id: str, **fields: Any) -> None:
        if "result" in fields and fields["result"] is not None:
            fields["result"] = json.dumps(fields["result"], default=jsonable)
        names = ", ".join(f"{k} = ?" for k in fields)
        self._run(f"UPDATE jobs SET {names} WHERE id = ?", (*fields.values(), job_id))

    def get(self, job_id: str) -> dict[str, Any] | None:
        rows = self._run("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        job = dict(rows[0])
        job["result"] = json.loads(job["result"]) if job["result"] else None
        return job

    def delete(self, job_id: str) -> bool:
        return bool(self._run("DELETE FROM jobs WHERE id = ? RETURNING id", (job_id,)))

    def count(self, *statuses: str) -> int:
        marks = ", ".join("?" * len(statuses))
        return int(self._run(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses)[0][0])

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of the done or failed jobs that finished before ``cutoff`` (a Unix time)."""
        rows = self._run("SELECT id FROM jobs WHERE status IN (?, ?) AND finished < ?",
                         (DONE, FAILED, cutoff))
        return [row[0] for row in rows]

    def fail_unfinished(self) -> int:
        """Mark jobs a previous process left queued or running as failed (at start-up)."""
        rows = self._run("UPDATE jobs SET status = ?, error = ?, stage = NULL, finished = ? "
                         "WHERE status IN (?, ?) RETURNING id",
                         (FAILED, INTERRUPTED, time.time(), QUEUED, RUNNING))
        return len(rows)
