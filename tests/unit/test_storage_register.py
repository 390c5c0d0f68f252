"""The county entity register: one index per enterprise across every dataset."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from broker.domain.datasets import ENTITY_INDEX_COLUMN
from connectors.crypto import Keyring, create_master_key
from connectors.storage import ParquetStorage


@pytest.fixture
def storage(tmp_path: Path) -> ParquetStorage:
    create_master_key(tmp_path / "master.key")
    return ParquetStorage(tmp_path / "datasets", Keyring(tmp_path / "master.key"))


def _indices(storage: ParquetStorage, location: str, entity: str) -> dict[object, int]:
    table = storage.read(location, columns=[entity, ENTITY_INDEX_COLUMN])
    return dict(zip(table.column(entity).to_pylist(),
                    table.column(ENTITY_INDEX_COLUMN).to_pylist(), strict=True))


def test_an_enterprise_has_one_index_in_every_dataset(storage: ParquetStorage) -> None:
    grid = storage.write("d-grid", 1, pa.table({"uscc": ["A", "B", "C", "A"],
                                                "kwh": [1.0, 2.0, 3.0, 4.0]}), "uscc")
    tax = storage.write("d-tax", 1, pa.table({"code": ["C", "D", "A"],
                                              "tax": [5.0, 6.0, 7.0]}), "code")
    later = storage.write("d-grid", 2, pa.table({"uscc": ["E", "B"],
                                                 "kwh": [1.0, 2.0]}), "uscc")
    first, second, third = (_indices(storage, grid, "uscc"), _indices(storage, tax, "code"),
                            _indices(storage, later, "uscc"))
    assert second["A"] == first["A"]
    assert second["C"] == first["C"]
    assert third["B"] == first["B"]
    numbers = [first["A"], first["B"], first["C"], second["D"], third["E"]]
    assert len(set(numbers)) == 5  # distinct enterprises, distinct numbers


def test_an_integer_code_and_its_digits_as_text_are_one_enterprise(
        storage: ParquetStorage) -> None:
    ints = storage.write("d-1", 1, pa.table({"id": [101, 102], "x": [1.0, 2.0]}), "id")
    text = storage.write("d-2", 1, pa.table({"id": ["102", "103"], "x": [1.0, 2.0]}), "id")
    assert _indices(storage, ints, "id")[102] == _indices(storage, text, "id")["102"]


def test_the_register_is_sealed_and_holds_no_figure(storage: ParquetStorage) -> None:
    storage.write("d-1", 1, pa.table({"uscc": ["SECRET-ID-1"], "kwh": [12345.5]}), "uscc")
    blob = (storage.root / "register.parquet.enc").read_bytes()
    assert b"SECRET-ID-1" not in blob
    assert b"PAR1" not in blob[:8]
