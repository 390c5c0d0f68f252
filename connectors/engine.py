"""The query engine: DuckDB in process over one decrypted dataset version."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds


class DuckDBEngine:
    """Runs planned SQL against Arrow relations registered under the names the plan uses.

    One in-memory DuckDB database serves every query; each query gets its own cursor (its own
    connection, so its registrations are private to it), which costs well under a millisecond
    where a fresh database costs about fifteen. The relations come decrypted from the storage,
    in memory (lazy datasets: DuckDB pushes projections and filters into the Parquet decoder),
    so DuckDB needs no file at all: external access is switched off for the whole
    database with no exception, spilling to a temporary directory is switched off (it would
    put decrypted rows on disk; a query too big for memory fails instead), and the
    configuration is locked before any statement runs. Statements are generated from
    schema-checked identifiers with every value bound, so none names a file.
    """

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self._db: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    def _database(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._db is None:
                db = duckdb.connect(":memory:", config={"threads": self.threads})
                db.execute("SET temp_directory = ''")
                db.execute("SET enable_external_access = false")
                db.execute("SET lock_configuration = true")
                self._db = db
            return self._db

    def run(
        self,
        relations: Mapping[str, pa.Table | ds.Dataset],
        sql: str,
        params: Sequence[Any],
    ) -> pa.Table:
        """The result of ``sql`` (parameters bound) as Arrow, over the named relations."""
        cursor = self._database().cursor()
        try:
            for name, table in relations.items():
                cursor.register(name, table)
            return cursor.sql(sql, params=list(params)).to_arrow_table()
        finally:
            cursor.close()

    def close(self) -> None:
        """Release the database."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
