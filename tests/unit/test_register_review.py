"""Second reader: the county entity register shared by several broker processes."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest

from broker.domain.datasets import ENTITY_INDEX_COLUMN
from broker.domain.errors import DatasetUnreadable
from connectors.crypto import Keyring, create_master_key
from connectors.storage import ParquetStorage


def _indices(storage: ParquetStorage, location: str, entity: str) -> dict[object, int]:
    table = storage.read(location, columns=[entity, ENTITY_INDEX_COLUMN])
    return dict(zip(table.column(entity).to_pylist(),
                    table.column(ENTITY_INDEX_COLUMN).to_pylist(), strict=True))


def test_two_workers_registering_at_once_never_share_a_number(tmp_path: Path) -> None:
    """``broker serve --workers N``: each worker has its own ParquetStorage over the same
    directory. Found by the second reader: the register's read-number-write ran under a
    lock of one instance only, so two workers could give two enterprises one county number.
    It now runs under a lock file every process takes; two instances writing at once from
    two threads (separate lock descriptors, as separate processes have) never share one."""
    create_master_key(tmp_path / "master.key")
    a = ParquetStorage(tmp_path / "datasets", Keyring(tmp_path / "master.key"))
    b = ParquetStorage(tmp_path / "datasets", Keyring(tmp_path / "master.key"))
    found: dict[str, dict[object, int]] = {}

    def upload(storage: ParquetStorage, who: str) -> None:
        for i in range(12):
            firms = [f"{who}-{i}-{n}" for n in range(3)] + ["SHARED"]
            located = storage.write(f"d-{who}-{i}", 1,
                                    pa.table({"uscc": firms, "x": [1.0] * 4}), "uscc")
            found[f"{who}{i}"] = _indices(storage, located, "uscc")

    workers = [threading.Thread(target=upload, args=(s, w)) for s, w in ((a, "a"), (b, "b"))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    numbers: dict[object, int] = {}
    for indices in found.values():
        for firm, number in indices.items():
            assert numbers.setdefault(firm, number) == number, firm  # one number per firm
    assert len(set(numbers.values())) == len(numbers)  # distinct firms, distinct numbers


def test_datasets_stored_without_the_register_are_refused_not_renumbered(
        tmp_path: Path) -> None:
    """A datasets directory whose entity indexes predate the register (or whose register was
    lost): numbering again from 0 would give old enterprises' numbers to new ones, so the
    next write is refused and nothing of it is stored."""
    create_master_key(tmp_path / "master.key")
    storage = ParquetStorage(tmp_path / "datasets", Keyring(tmp_path / "master.key"))
    storage.write("d-old", 1, pa.table({"uscc": ["A", "B"], "x": [1.0, 2.0]}), "uscc")
    for name in ("register.parquet.enc", "register.parquet.key"):
        (storage.root / name).unlink()
    with pytest.raises(DatasetUnreadable):
        storage.write("d-new", 1, pa.table({"code": ["C"], "y": [3.0]}), "code")
    assert not (storage.root / "register.parquet.enc").exists()
