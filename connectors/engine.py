"""The query engine: DuckDB in process over one stored dataset version."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq


class DuckDBEngine:
    """Runs planned SQL against a version loaded as the relation ``src``.

    Only the columns the plan reads are loaded; once they are in memory the connection's
    external access is switched off, so the statement itself cannot reach any file.
    """

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads

    def run(
        self,
        location: Path,
        sql: str,
        params: Sequence[Any],
        columns: Sequence[str] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (parameters bound) over the Parquet file at ``location``."""
        table = pq.read_table(location, columns=list(columns) if columns else None)
        con = duckdb.connect(":memory:", config={"threads": self.threads})
        try:
            con.register("src", table)
            con.execute("SET enable_external_access = false")
            return con.execute(sql, list(params)).fetchall()
        finally:
            con.close()
