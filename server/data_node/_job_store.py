"""Job records persisted in an embedded SQLite database in the node's state dir."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["JobRecord", "JobStore"]

# Bump with a migration when the table changes; a database of another version is refused.
_SCHEMA_VERSION = 1
_COLUMNS = (
    "job_id",
    "state",
    "request",
    "created_at",
    "started_at",
    "ended_at",
    "classes",
    "error",
)


@dataclass(frozen=True)
class JobRecord:
    """What the node keeps of a job across restarts.

    Attributes:
        job_id: The job's id.
        state: The JobState name without its prefix: "QUEUED", "RUNNING", "SUCCEEDED",
            "FAILED" or "CANCELLED".
        request: The accepted SubmitBuildJobRequest, serialized.
        created_at: Unix time of the submission.
        started_at: Unix time the job started running; 0 if it never did.
        ended_at: Unix time the job ended; 0 if it has not.
        classes: A patch build: (class value, patches written, patches in total, their
            bytes) per class, in class order; an import: (case index, done, slices, kept)
            per case.
        error: Why the job failed; "" otherwise.
    """

    job_id: str
    state: str
    request: bytes
    created_at: float
    started_at: float = 0.0
    ended_at: float = 0.0
    classes: tuple[tuple[int, ...], ...] = ()
    error: str = ""


class JobStore:
    """Insert, update and load job records; safe to use from several threads.

    Args:
        path: The database file (created, with its table, if missing).

    Raises:
        sqlite3.DatabaseError: The file is not a job database of this version.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        version = self._connection.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            self._connection.close()
            raise sqlite3.DatabaseError(
                f"Expected a job database of version {_SCHEMA_VERSION} in {str(path)!r}. "
                f"Got version {version} instead."
            )
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS jobs ("
            "seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT UNIQUE NOT NULL, "
            "state TEXT NOT NULL, request BLOB NOT NULL, created_at REAL NOT NULL, "
            "started_at REAL NOT NULL, ended_at REAL NOT NULL, classes TEXT NOT NULL, "
            "error TEXT NOT NULL)"
        )
        self._connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def insert(self, record: JobRecord) -> None:
        """Add a new job."""
        names = ", ".join(_COLUMNS)
        marks = ", ".join("?" * len(_COLUMNS))
        with self._lock:
            self._connection.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", _row(record))

    def update(self, record: JobRecord) -> None:
        """Overwrite the job's stored record with ``record``."""
        assignments = ", ".join(f"{name} = ?" for name in _COLUMNS[1:])
        with self._lock:
            self._connection.execute(
                f"UPDATE jobs SET {assignments} WHERE job_id = ?",
                (*_row(record)[1:], record.job_id),
            )

    def load(self) -> list[JobRecord]:
        """Every job, in submission order."""
        with self._lock:
            rows = self._connection.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY seq"
            ).fetchall()
        return [
            JobRecord(
                job_id=job_id,
                state=state,
                request=bytes(request),
                created_at=created_at,
                started_at=started_at,
                ended_at=ended_at,
                classes=tuple(tuple(entry) for entry in json.loads(classes)),
                error=error,
            )
            for job_id, state, request, created_at, started_at, ended_at, classes, error in rows
        ]

    def close(self) -> None:
        """Close the database; idempotent."""
        with self._lock:
            self._connection.close()


def _row(record: JobRecord) -> tuple[object, ...]:
    return (
        record.job_id,
        record.state,
        record.request,
        record.created_at,
        record.started_at,
        record.ended_at,
        json.dumps([list(entry) for entry in record.classes]),
        record.error,
    )
