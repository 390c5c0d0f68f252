"""Atoms: each stored row's unknown for the release audit, stable across versions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from broker.domain.datasets import ATOM_COLUMN, ATOM_OWNER_SHIFT, ENTITY_INDEX_COLUMN
from connectors.storage import ParquetStorage

DATASET = "0b6f5d3e-9a51-4c1b-8a53-2f1f4f2a1c11"


def _atoms(storage: ParquetStorage, location: str) -> list[tuple[int, int]]:
    table = storage.read(location, columns=[ENTITY_INDEX_COLUMN, ATOM_COLUMN]).to_pydict()
    return list(zip(table[ENTITY_INDEX_COLUMN], table[ATOM_COLUMN], strict=True))


def test_each_row_gets_an_atom_of_its_own_enterprise(storage: ParquetStorage) -> None:
    frame = pd.DataFrame({"uscc": ["A", "A", "B", "A"], "kwh": [1.0, 2.0, 3.0, 1.0],
                          "month": ["01", "02", "01", "01"]})  # rows 0 and 3 are identical
    pairs = _atoms(storage, storage.write(DATASET, 1, frame, "uscc"))
    assert all(atom >> ATOM_OWNER_SHIFT == entity for entity, atom in pairs)
    assert len({atom for _, atom in pairs}) == 4  # identical rows are told apart


def test_unchanged_rows_keep_their_atoms_in_a_new_version_and_changed_ones_do_not(
    storage: ParquetStorage, tmp_path: Path
) -> None:
    first = pd.DataFrame({"uscc": ["A", "A", "B", "C"], "kwh": [1.0, 2.0, 3.0, 4.0]})
    v1 = _atoms(storage, storage.write(DATASET, 1, first, "uscc"))
    second = pd.DataFrame({"uscc": ["C", "A", "B", "A", "D"],
                           "kwh": [4.0, 2.0, 30.0, 1.0, 5.0]})  # B changed, D new, reordered
    v2 = _atoms(storage, storage.write(DATASET, 2, second, "uscc"))
    before = dict(zip(["A1", "A2", "B", "C"], (a for _, a in v1), strict=True))
    after = dict(zip(["C", "A2", "B", "A1", "D"], (a for _, a in v2), strict=True))
    assert after["A1"] == before["A1"]
    assert after["A2"] == before["A2"]
    assert after["C"] == before["C"]
    assert after["B"] != before["B"]  # a changed figure is a new unknown
    assert after["B"] >> ATOM_OWNER_SHIFT == before["B"] >> ATOM_OWNER_SHIFT
    assert len(set(after.values()) | set(before.values())) == 6
    assert not list(tmp_path.rglob("atoms.parquet"))  # the index is sealed, never plain


def test_a_dropped_first_version_takes_its_indexes_along(storage: ParquetStorage) -> None:
    location = storage.write(DATASET, 1, pd.DataFrame({"uscc": ["A"], "kwh": [1.0]}), "uscc")
    storage.drop_indexes(DATASET)
    storage.remove(location)
    assert not storage.resolve(DATASET).exists()
