"""Second reader: the county entity register shared by several broker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from broker.domain.datasets import ENTITY_INDEX_COLUMN
from connectors.crypto import Keyring, create_master_key
from connectors.storage import ParquetStorage


def _indices(storage: ParquetStorage, location: str, entity: str) -> dict[object, int]:
    table = storage.read(location, columns=[entity, ENTITY_INDEX_COLUMN])
    return dict(zip(table.column(entity).to_pylist(),
                    table.column(ENTITY_INDEX_COLUMN).to_pylist(), strict=True))


def test_two_workers_registering_at_once_never_share_a_number(tmp_path: Path) -> None:
    """``broker serve --workers N``: each worker has its own ParquetStorage over the same
    directory, and ``_register``'s read-number-write runs under a ``threading.Lock`` of its
    own instance only. Worker B uploading between worker A's read of the register and its
    write numbers its new enterprise from the same start: two different enterprises get one
    county number, so the engine joins one's figures to the other's, and k, dominance and the
    county-wide count system count them as one."""
    create_master_key(tmp_path / "master.key")
    a = ParquetStorage(tmp_path / "datasets", Keyring(tmp_path / "master.key"))
    b = ParquetStorage(tmp_path / "datasets", Keyring(tmp_path / "master.key"))
    a.write("d-seed", 1, pa.table({"uscc": ["S"], "x": [1.0]}), "uscc")
    written: dict[str, str] = {}
    original = a._write_sealed

    def interleaved(table: pa.Table, target: Path, *args: Any, **kwargs: Any) -> None:
        if target.name.startswith("register") and not written:
            # worker B's whole upload runs between A's read of the register and its write
            written["b"] = b.write("d-b", 1, pa.table({"code": ["B-ONLY"], "y": [2.0]}),
                                   "code")
        original(table, target, *args, **kwargs)

    a._write_sealed = interleaved  # type: ignore[method-assign]
    located = a.write("d-a", 1, pa.table({"uscc": ["A-ONLY"], "x": [3.0]}), "uscc")
    number_a = _indices(a, located, "uscc")["A-ONLY"]
    number_b = _indices(b, written["b"], "code")["B-ONLY"]
    assert number_a != number_b, "two enterprises share one county number"


def test_datasets_stored_before_the_register_keep_distinct_numbers(tmp_path: Path) -> None:
    """A datasets directory from the release before the register: each dataset's entity
    index numbered its own enterprises 0, 1, ... (as the current code does for the first
    dataset of an empty register; the register file is then removed to stand for that older
    directory). Nothing carries those numbers into the register, which starts again at 0: a
    new dataset's enterprises, and an old dataset's new enterprises in a later version, get
    numbers its old enterprises already hold, so joins, k and the county-wide count system
    take different enterprises for one."""
    create_master_key(tmp_path / "master.key")
    storage = ParquetStorage(tmp_path / "datasets", Keyring(tmp_path / "master.key"))
    old = storage.write("d-old", 1, pa.table({"uscc": ["A", "B"], "x": [1.0, 2.0]}), "uscc")
    for name in ("register.parquet.enc", "register.parquet.key"):
        (storage.root / name).unlink()
    new = storage.write("d-new", 1, pa.table({"code": ["C"], "y": [3.0]}), "code")
    later = storage.write("d-old", 2, pa.table({"uscc": ["A", "D"], "x": [1.0, 4.0]}), "uscc")
    numbers = {**_indices(storage, old, "uscc"), **_indices(storage, new, "code"),
               **_indices(storage, later, "uscc")}
    assert len(set(numbers.values())) == len(numbers), numbers
