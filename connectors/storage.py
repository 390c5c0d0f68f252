"""Dataset versions at rest as Parquet files under the data directory."""

from __future__ import annotations

import os
import re
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

    def write(self, dataset_id: str, version: int, frame: pd.DataFrame) -> str:
        """Store ``frame`` as ``dataset_id`` version ``version``; returns its location."""
        if not _ID.fullmatch(dataset_id):
            raise ValueError("dataset id is not a safe path component")
        location = f"{dataset_id}/v{int(version)}.parquet"
        target = self.resolve(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        table = pa.Table.from_pandas(frame, preserve_index=False)
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return location

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
