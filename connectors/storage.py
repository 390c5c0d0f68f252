"""Dataset versions at rest as Parquet files under the data directory."""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from broker.domain.datasets import ENTITY_INDEX_COLUMN

_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class ParquetStorage:
    """Writes each version once, atomically (temporary file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._index_lock = threading.Lock()
        self._dates: dict[tuple[str, tuple[str, ...]], dict[str, tuple[dt.date, ...]]] = {}

    def write(self, dataset_id: str, version: int, frame: pd.DataFrame, entity_field: str
              ) -> str:
        """Store ``frame`` as ``dataset_id`` version ``version``; returns its location.

        Each row also gets its enterprise's dense index in the column ``#entity`` (no field
        name can contain '#'): the engine groups by that integer, and the differencing guard
        keeps released populations as bitmaps of it. An enterprise keeps its index for the life
        of the dataset (``entities.parquet`` beside the versions); new ones are numbered on.
        """
        if not _ID.fullmatch(dataset_id):
            raise ValueError("dataset id is not a safe path component")
        location = f"{dataset_id}/v{int(version)}.parquet"
        index = self._index_entities(dataset_id, frame[entity_field])
        table = pa.Table.from_pandas(frame, preserve_index=False).append_column(
            ENTITY_INDEX_COLUMN, pa.array(frame[entity_field].map(index), type=pa.uint32()))
        self._atomic_write(table, self.resolve(location))
        return location

    def _index_entities(self, dataset_id: str, entities: pd.Series) -> pd.Series:
        path = self.entity_index(dataset_id)
        with self._index_lock:
            known = pq.read_table(path).to_pandas() if path.exists() else None
            fresh = pd.Series(entities.dropna().unique())
            if known is not None:
                fresh = fresh[~fresh.isin(known["e"])]
            start = 0 if known is None else int(known["i"].max()) + 1
            added = pd.DataFrame({"e": fresh.sort_values(ignore_index=True)})
            added["i"] = pd.Series(range(start, start + len(added)), dtype="uint32")
            merged = added if known is None else pd.concat([known, added], ignore_index=True)
            if not added.empty:
                self._atomic_write(pa.Table.from_pandas(merged, preserve_index=False), path)
        return pd.Series(merged["i"].to_numpy(), index=merged["e"])

    def dates(self, location: str, fields: Sequence[str]) -> dict[str, tuple[dt.date, ...]]:
        """The distinct dates of each date field of a stored version, sorted (kept per
        version: versions never change)."""
        key = (location, tuple(fields))
        with self._index_lock:
            cached = self._dates.get(key)
        if cached is None:
            table = pq.read_table(self.resolve(location), columns=list(fields))
            cached = {
                name: tuple(sorted(d for d in pc.unique(table.column(name)).to_pylist()
                                   if d is not None))
                for name in fields
            }
            with self._index_lock:
                self._dates[key] = cached
        return cached

    def entity_index(self, dataset_id: str) -> Path:
        """Where the dataset's entity index lives."""
        if not _ID.fullmatch(dataset_id):
            raise ValueError("dataset id is not a safe path component")
        return self.resolve(f"{dataset_id}/entities.parquet")

    def _atomic_write(self, table: pa.Table, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self, location: str) -> None:
        """Delete a stored version (used to undo a registration that did not commit)."""
        path = self.resolve(location)
        path.unlink(missing_ok=True)
        if path.parent != self.root and path.parent.exists() and not any(path.parent.iterdir()):
            path.parent.rmdir()

    def resolve(self, location: str) -> Path:
        """Absolute path of a location, which must stay inside the storage root."""
        path = (self.root / location).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("location escapes the storage root")
        return path
