"""Dataset versions at rest as Parquet files under the data directory."""

from __future__ import annotations

import os
import re
import threading
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class ParquetStorage:
    """Writes each version once, atomically (temporary file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._index_lock = threading.Lock()

    def write(self, dataset_id: str, version: int, frame: pd.DataFrame) -> str:
        """Store ``frame`` as ``dataset_id`` version ``version``; returns its location."""
        if not _ID.fullmatch(dataset_id):
            raise ValueError("dataset id is not a safe path component")
        location = f"{dataset_id}/v{int(version)}.parquet"
        self._atomic_write(pa.Table.from_pandas(frame, preserve_index=False),
                           self.resolve(location))
        return location

    def index_entities(self, dataset_id: str, entities: pd.Series) -> Path:
        """Give every enterprise of ``entities`` a dense index, stable across versions.

        The differencing guard keeps released populations as bitmaps of these indices; an
        enterprise keeps its index for the life of the dataset, new ones are numbered on.
        """
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
            self._atomic_write(pa.Table.from_pandas(merged, preserve_index=False), path)
        return path

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
