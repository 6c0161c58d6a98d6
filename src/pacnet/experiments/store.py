"""The results store: one SQLite row per finished run, holding its whole result.json.

A row is written in one transaction when a run ends, so an interrupted sweep leaves either
a complete row or none; re-running the sweep skips the run ids already stored. Many
processes may read; the sweep's main process is the only writer. The schema carries a
version; a database written by a newer pacnet is refused rather than misread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pacnet.errors import PacnetError

SCHEMA_VERSION = 1
DEFAULT_DB = Path("runs/pacnet.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    benchmark TEXT NOT NULL,
    method TEXT NOT NULL,
    seed INTEGER NOT NULL,
    target_size INTEGER NOT NULL,
    metric TEXT NOT NULL,
    target_test REAL NOT NULL,
    source_test_before REAL NOT NULL,
    source_test_after REAL NOT NULL,
    seconds REAL NOT NULL,
    finished TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_benchmark ON runs (benchmark, method, target_size);
"""


class Store:
    """Results of finished runs in a SQLite file (created on first use)."""

    def __init__(self, path: str | Path = DEFAULT_DB):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            with self._db:
                self._db.executescript(_SCHEMA)
                row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                    )
                elif int(row[0]) > SCHEMA_VERSION:
                    raise PacnetError(
                        f"{self.path}: results schema version {row[0]} is newer than this "
                        f"pacnet reads ({SCHEMA_VERSION}); upgrade pacnet"
                    )
        except sqlite3.DatabaseError as exc:
            raise PacnetError(f"{self.path}: not a usable results database ({exc})") from None
        except OSError as exc:
            raise PacnetError(f"{self.path}: cannot open ({exc.strerror})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def ids(self) -> set[str]:
        """Run ids already stored."""
        return {r[0] for r in self._db.execute("SELECT run_id FROM runs")}

    def add(self, result: dict[str, Any]) -> bool:
        """Store a finished run (one transaction); False if its id was already there."""
        with self._db:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    result["run_id"],
                    result["benchmark"],
                    result["method"],
                    result["seed"],
                    result["target_size"],
                    result["metric"],
                    result["target_test"],
                    result["source_test_before"],
                    result["source_test_after"],
                    result["seconds"],
                    result["finished"],
                    json.dumps(result),
                ),
            )
        return cursor.rowcount == 1

    def results(self, benchmark: str | None = None, ids: Iterable[str] | None = None) -> list[dict]:
        """Stored results (whole result.json), optionally of one benchmark or some run ids."""
        query, args = "SELECT result FROM runs", []
        if benchmark is not None:
            query += " WHERE benchmark = ?"
            args.append(benchmark)
        query += " ORDER BY benchmark, method, target_size, seed"
        rows = [json.loads(r[0]) for r in self._db.execute(query, args)]
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["run_id"] in wanted]
        return rows
