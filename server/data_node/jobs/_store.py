"""Job records persisted in an embedded SQLite database in the node's state dir.

Besides one row per job, the database holds the journal of publishes in progress: a row
written before a job's output is moved into place and deleted in the same transaction that
records the job SUCCEEDED (see ``data_node.jobs.manager``), so a node restarted after a crash knows
which publish to finish.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["JobRecord", "JobStore", "PublishIntent"]

# Bump with a migration when a table changes; a database of another version is refused.
_SCHEMA_VERSION = 2
_COLUMNS = (
    "job_id",
    "state",
    "request",
    "created_at",
    "started_at",
    "ended_at",
    "classes",
    "error",
    "replaced_by",
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
        replaced_by: The id of the later job whose output replaced this one's; "" if none.
    """

    job_id: str
    state: str
    request: bytes
    created_at: float
    started_at: float = 0.0
    ended_at: float = 0.0
    classes: tuple[tuple[int, ...], ...] = ()
    error: str = ""
    replaced_by: str = ""


@dataclass(frozen=True)
class PublishIntent:
    """A publish begun and not yet recorded as done.

    Attributes:
        job_id: The job whose output is being published.
        output: The output, relative to the output root.
        replaces: The id of the job whose output is being replaced; "" if none.
        counts: {class value: patches written} of the finished build.
    """

    job_id: str
    output: str
    replaces: str
    counts: dict[int, int]


class JobStore:
    """Insert, update and load job records and publish intents; safe from several threads.

    Args:
        path: The database file (created, with its tables, if missing; a version 1
            database is migrated).

    Raises:
        sqlite3.DatabaseError: The file is not a job database of a known version.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        version = self._connection.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, _SCHEMA_VERSION):
            self._connection.close()
            raise sqlite3.DatabaseError(
                f"Expected a job database of version {_SCHEMA_VERSION} in {str(path)!r}. "
                f"Got version {version} instead."
            )
        with self._transaction():
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS jobs ("
                "seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT UNIQUE NOT NULL, "
                "state TEXT NOT NULL, request BLOB NOT NULL, created_at REAL NOT NULL, "
                "started_at REAL NOT NULL, ended_at REAL NOT NULL, classes TEXT NOT NULL, "
                "error TEXT NOT NULL, replaced_by TEXT NOT NULL DEFAULT '')"
            )
            if version == 1:
                self._connection.execute(
                    "ALTER TABLE jobs ADD COLUMN replaced_by TEXT NOT NULL DEFAULT ''"
                )
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS publishes (job_id TEXT PRIMARY KEY, "
                "output TEXT NOT NULL, replaces TEXT NOT NULL, counts TEXT NOT NULL)"
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
        with self._lock:
            self._update(record)

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
                replaced_by=replaced_by,
            )
            for (
                job_id,
                state,
                request,
                created_at,
                started_at,
                ended_at,
                classes,
                error,
                replaced_by,
            ) in rows
        ]

    def begin_publish(self, intent: PublishIntent) -> None:
        """Journal ``intent`` before any file of the publish moves."""
        counts = json.dumps(list(intent.counts.items()))
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO publishes VALUES (?, ?, ?, ?)",
                (intent.job_id, intent.output, intent.replaces, counts),
            )

    def end_publish(self, record: JobRecord, replaces: str = "") -> None:
        """In one transaction: store ``record``, mark ``replaces`` replaced, drop the intent.

        Args:
            record: The job's record (SUCCEEDED once its output is in place, FAILED once the
                publish was rolled back).
            replaces: The job whose output ``record``'s replaced; "" for none.
        """
        with self._lock, self._transaction():
            self._update(record)
            if replaces:
                self._connection.execute(
                    "UPDATE jobs SET replaced_by = ? WHERE job_id = ?", (record.job_id, replaces)
                )
            self._connection.execute("DELETE FROM publishes WHERE job_id = ?", (record.job_id,))

    def intents(self) -> list[PublishIntent]:
        """The publishes begun and not ended (by a node that died meanwhile)."""
        with self._lock:
            rows = self._connection.execute("SELECT * FROM publishes").fetchall()
        return [
            PublishIntent(job_id, output, replaces, {int(v): int(n) for v, n in json.loads(counts)})
            for job_id, output, replaces, counts in rows
        ]

    def close(self) -> None:
        """Close the database; idempotent."""
        with self._lock:
            self._connection.close()

    def _update(self, record: JobRecord) -> None:
        assignments = ", ".join(f"{name} = ?" for name in _COLUMNS[1:])
        self._connection.execute(
            f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*_row(record)[1:], record.job_id)
        )

    def _transaction(self) -> sqlite3.Connection:
        # In autocommit mode (isolation_level None) "with connection" alone commits nothing
        # that was not begun: begin explicitly.
        self._connection.execute("BEGIN IMMEDIATE")
        return self._connection


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
        record.replaced_by,
    )
