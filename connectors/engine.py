"""The query engine: DuckDB in process over one stored dataset version."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq


class DuckDBEngine:
    """Runs planned SQL against a version loaded as the relation ``src``.

    One in-memory DuckDB database serves every query; each query gets its own cursor (its own
    connection, so its ``src`` registration is private to it), which costs well under a
    millisecond where a fresh database costs about fifteen. External access is switched off for
    the whole database before any statement runs: rows reach DuckDB only as Arrow tables loaded
    here, with just the columns the plan reads, so no statement can open a file.
    """

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self._db: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    def _database(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._db is None:
                db = duckdb.connect(":memory:", config={"threads": self.threads})
                db.execute("SET enable_external_access = false")
                db.execute("SET lock_configuration = true")
                self._db = db
            return self._db

    def run(
        self,
        location: Path,
        sql: str,
        params: Sequence[Any],
        columns: Sequence[str] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (parameters bound) over the Parquet file at ``location``."""
        table = pq.read_table(location, columns=list(columns) if columns else None)
        cursor = self._database().cursor()
        try:
            cursor.register("src", table)
            return cursor.execute(sql, list(params)).fetchall()
        finally:
            cursor.close()

    def close(self) -> None:
        """Release the database."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
