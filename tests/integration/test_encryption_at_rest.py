"""Encryption at rest through the real app: sealed versions, fail-closed reads, no plaintext on
disk, and master-key rotation with ``broker keys rotate``."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import connectors.crypto
from broker.cli import app
from broker.domain.errors import DatasetUnreadable
from broker.domain.uscc import make_uscc
from broker.settings import Settings
from connectors.crypto import HEADER, NONCE_BYTES, MasterKey, SealError, unwrap_key
from connectors.storage import ParquetStorage
from tests.conftest import ENERGY, World, assert_problem, auth

runner = CliRunner()
_shapes = count()

TOWN = "临平街道"
FIRM = "Zhejiang Qiantang Sunrise Textiles"
USCCS = [make_uscc("330110", f"MA2KX7Q{i}") for i in range(9)]
USCC = USCCS[0]
KWH = 7654321.125  # exact in binary, so its IEEE bytes are a needle too

#: A dataset whose values are easy to find if any of them is ever written in the clear; both
#: towns have enough enterprises of like size that their cells are published.
NEEDLES = pd.DataFrame({
    "uscc": USCCS,
    "town": [TOWN] * 5 + ["塘栖镇"] * 4,
    "name": [f"{FIRM} Co., Ltd.", "Hangzhou Linping Dyeing Works", "Yuhang Smart Home Ltd.",
             "Tangqi Auto Parts Ltd.", "Chongxian Photovoltaic Ltd.", "Renhe Equipment Ltd.",
             "Yunhe Silk Mill", "Qiaosi Precision Castings", "Donghu Solar Glass"],
    "kwh": [KWH, 7123456.5, 7234567.25, 7345678.75, 7456789.375, 6123456.625, 6234567.875,
            6345678.0625, 6456789.3125],
})
FIELDS = [{"name": "town", "type": "string", "role": "dimension"},
          {"name": "name", "type": "string", "role": "identifier"},
          {"name": "kwh", "type": "number", "role": "measure"}]


def _query(world: World, contract_id: str | None = None, **body: Any) -> Any:
    """A query of a shape never asked before, so that it reads the stored version rather than
    an earlier answer."""
    shape = next(_shapes)
    return world.query(contract_id=contract_id or world.contract["id"], group_by=["town"],
                       measures=[{"fn": "count"},
                                 {"fn": "sum", "field": "kwh", "as": f"kwh_{shape}"}],
                       **body)


def _last_refusal(world: World) -> list[str]:
    r = world.client.get("/v1/audit/entries", headers=auth(world.auditor),
                         params={"action": "query.aggregate", "allowed": "false",
                                 "limit": 1000})
    assert r.status_code == 200, r.text
    reasons: list[str] = r.json()["entries"][-1]["entry"]["decision"]["reasons"]
    return reasons


def _refused(world: World, contract_id: str | None = None) -> None:
    """A query now fails closed with the dataset-unreadable problem, and that is audited."""
    before = len(_refusals(world))
    body = assert_problem(_query(world, contract_id), 503, "dataset-unreadable")
    assert "cells" not in body
    assert len(_refusals(world)) == before + 1
    assert _last_refusal(world) == ["dataset-unreadable"]


def _refusals(world: World) -> list[Any]:
    r = world.client.get("/v1/audit/entries", headers=auth(world.auditor),
                         params={"action": "query.aggregate", "allowed": "false",
                                 "limit": 1000})
    entries: list[Any] = r.json()["entries"]
    return entries


def _version(settings: Settings, world: World, version: int = 1) -> Path:
    dataset_id: str = world.dataset["id"]
    return settings.datasets_dir / dataset_id / f"v{version}.parquet.enc"


def _storage(world: World) -> ParquetStorage:
    storage: ParquetStorage = world.client.app.state.container.datasets.storage  # type: ignore[attr-defined]
    return storage


def _flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_query_decrypts_the_stored_version_and_answers_as_before(world: World) -> None:
    r = world.query(group_by=["town"], measures=[{"fn": "count"},
                                                 {"fn": "sum", "field": "kwh"}])
    assert r.status_code == 200, r.text
    cells = {c["key"]["town"]: c for c in r.json()["cells"] if c["key"]}
    assert cells["A"]["values"] == {"count": 6, "sum_kwh": 85.0}
    assert cells["B"]["status"] == "suppressed"


def test_a_stored_version_is_sealed_with_its_key_beside_it(
    world: World, settings: Settings
) -> None:
    sealed = _version(settings, world)
    assert sealed.read_bytes().startswith(HEADER)
    assert not sealed.read_bytes().startswith(b"PAR1")
    key_file = json.loads(sealed.with_suffix(".key").read_bytes())
    master = MasterKey(settings.master_key_path.read_bytes())
    assert key_file["kek"] == master.id
    assert key_file["alg"] == "A256GCM"
    assert settings.master_key_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("where", ["magic", "format", "nonce", "body", "tag"])
def test_a_flipped_byte_in_a_stored_version_makes_queries_fail_closed(
    world: World, settings: Settings, where: str
) -> None:
    sealed = _version(settings, world)
    size = sealed.stat().st_size
    position = {"magic": 0, "format": len(HEADER) - 1, "nonce": len(HEADER) + NONCE_BYTES // 2,
                "body": size // 2, "tag": size - 1}[where]
    _flip(sealed, position)
    _refused(world)
    _flip(sealed, position)  # restored: answered again
    assert _query(world).status_code == 200


@pytest.mark.parametrize("where", ["first", "kek", "wrapped", "last"])
def test_a_flipped_byte_in_a_key_file_makes_queries_fail_closed(
    world: World, settings: Settings, where: str
) -> None:
    key_file = _version(settings, world).with_suffix(".key")
    text = key_file.read_text()
    position = {"first": 0, "kek": text.index('"kek": "') + 9,
                "wrapped": text.index('"wrapped": "') + 20, "last": len(text) - 2}[where]
    _flip(key_file, position)
    _refused(world)


def test_a_missing_key_file_or_version_makes_queries_fail_closed(
    world: World, settings: Settings
) -> None:
    sealed = _version(settings, world)
    key_file = sealed.with_suffix(".key")
    saved = key_file.read_bytes()
    key_file.unlink()
    _refused(world)
    key_file.write_bytes(saved)
    sealed.unlink()
    _refused(world)


@pytest.mark.parametrize("keep", [0, len(HEADER) + NONCE_BYTES, -1, -17])
def test_a_truncated_version_is_refused(world: World, settings: Settings, keep: int) -> None:
    sealed = _version(settings, world)
    data = sealed.read_bytes()
    sealed.write_bytes(data[:keep])
    _refused(world)


def test_swapped_versions_of_one_dataset_are_refused(world: World, settings: Settings) -> None:
    changed = ENERGY.assign(kwh=ENERGY["kwh"] * 2)
    _storage(world).write(world.dataset["id"], 2, changed, "uscc")
    v1, v2 = _version(settings, world, 1), _version(settings, world, 2)
    one, two = v1.read_bytes(), v2.read_bytes()
    v1.write_bytes(two)  # the data file alone, under v1's key: does not authenticate
    _refused(world)
    k1, k2 = v1.with_suffix(".key"), v2.with_suffix(".key")
    k1.write_bytes(k2.read_bytes())  # and its key file too: bound to the v2 location
    _refused(world)
    assert one != two


def test_a_version_swapped_in_from_another_dataset_is_refused(
    world: World, settings: Settings
) -> None:
    other = world.add_dataset(ENERGY.assign(kwh=ENERGY["kwh"] + 1), FIELDS)
    mine = _version(settings, world)
    theirs = settings.datasets_dir / other / "v1.parquet.enc"
    mine.write_bytes(theirs.read_bytes())
    mine.with_suffix(".key").write_bytes(theirs.with_suffix(".key").read_bytes())
    _refused(world)


def test_a_tampered_entity_index_is_refused_when_read(world: World, settings: Settings) -> None:
    index = settings.datasets_dir / world.dataset["id"] / "entities.parquet.enc"
    assert index.read_bytes().startswith(HEADER)
    _flip(index, index.stat().st_size // 2)
    with pytest.raises(DatasetUnreadable):
        _storage(world).write(world.dataset["id"], 2, ENERGY, "uscc")
    _flip(index, index.stat().st_size // 2)
    _flip(index.with_suffix(".key"), 3)
    with pytest.raises(DatasetUnreadable):
        _storage(world).write(world.dataset["id"], 2, ENERGY, "uscc")


def test_a_tampered_cached_answer_fails_closed_and_is_audited(
    world: World, settings: Settings
) -> None:
    import sqlite3

    spec: dict[str, Any] = {"group_by": ["town"], "measures": [{"fn": "count"}]}
    first = world.query(**spec)
    assert first.status_code == 200
    assert world.query(**spec).json()["cells"] == first.json()["cells"]  # from the cache
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        (body,) = conn.execute("SELECT body FROM release_cache").fetchone()
        assert "cells" not in body
        assert '"A"' not in body
        tampered = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
        conn.execute("UPDATE release_cache SET body = ?", (tampered,))
    body = assert_problem(world.query(**spec), 503, "dataset-unreadable")
    assert "cells" not in body
    assert _last_refusal(world) == ["dataset-unreadable"]


def _needles() -> dict[str, bytes]:
    """Every value of NEEDLES, as the bytes it could be written as: UTF-8, JSON-escaped,
    UTF-16; numbers as text and as IEEE doubles."""
    out: dict[str, bytes] = {}
    for column in ("uscc", "town", "name"):
        for value in NEEDLES[column]:
            out[f"{column} {value} utf-8"] = value.encode()
            out[f"{column} {value} json"] = json.dumps(value)[1:-1].encode()
            out[f"{column} {value} utf-16"] = value.encode("utf-16-le")
    for value in NEEDLES["kwh"]:
        out[f"kwh {value} text"] = repr(value).encode()
        out[f"kwh {value} double"] = struct.pack("<d", value)
    return out


def _files(root: Path) -> Iterator[Path]:
    return (p for p in sorted(root.rglob("*")) if p.is_file())


def _found(paths: Iterator[Path], needles: dict[str, bytes]) -> list[tuple[str, str]]:
    hits = []
    for path in paths:
        content = path.read_bytes()
        hits += [(str(path), name) for name, needle in needles.items() if needle in content]
    return hits


def test_no_value_of_a_registered_dataset_can_be_found_in_any_file_under_the_data_dir(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    dataset_id = world.add_dataset(NEEDLES, FIELDS, name="needles")
    contract_id = world.contract_for(dataset_id)
    spec: dict[str, Any] = {"contract_id": contract_id, "group_by": ["town"],
            "measures": [{"fn": "count"}, {"fn": "sum", "field": "kwh"}]}
    answer = world.query(**spec)
    assert answer.status_code == 200, answer.text
    assert {"town": TOWN} in [c["key"] for c in answer.json()["cells"]
                              if c["status"] == "published"]  # so it is in the cache
    assert world.query(**spec).json()["cells"] == answer.json()["cells"]
    assert world.query(contract_id=contract_id, measures=[{"fn": "count"}]).status_code == 200
    assert (settings.data_dir / "broker.db-wal").exists()
    needles = _needles()

    # The scan would find them in the clear: an uncompressed Parquet file and the answer.
    control = tmp_path / "control.parquet"
    pq.write_table(_storage(world).read(f"{dataset_id}/v1.parquet.enc"), control,
                   compression="none")
    assert {n for _, n in _found(iter([control]), needles)} >= {
        n for n in needles if n.endswith(("utf-8", "double"))}
    assert _found(iter([control]), {"town": TOWN.encode()})

    scanned = list(_files(settings.data_dir))
    assert {p.name for p in scanned} >= {"broker.db", "broker.db-wal", "v1.parquet.enc",
                                         "v1.parquet.key", "entities.parquet.enc",
                                         "master.key", "release-cache.key"}
    assert _found(iter(scanned), needles) == []


def _rotate(settings: Settings) -> Any:
    return runner.invoke(app, ["keys", "rotate"], env={"BROKER_DATA_DIR": str(settings.data_dir)})


def _key_files(settings: Settings) -> dict[Path, str]:
    """Every key file with the context its data key is bound to."""
    files = dict(ParquetStorage(
        settings.datasets_dir, connectors.crypto.Keyring(settings.master_key_path)).key_files())
    files[settings.keys_dir / "release-cache.key"] = connectors.crypto.TextSealer.PURPOSE
    return files


def _sealed(settings: Settings) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in settings.datasets_dir.rglob("*.enc")}


def test_rotation_rewraps_every_data_key_and_never_touches_the_data(
    world: World, settings: Settings
) -> None:
    spec: dict[str, Any] = {"group_by": ["town"], "measures": [{"fn": "count"}]}
    cached = world.query(**spec).json()["cells"]
    data = _sealed(settings)
    old = MasterKey(settings.master_key_path.read_bytes())
    files = _key_files(settings)
    assert len(files) == 5  # v1, the entity and atom indexes, the register, the release cache

    result = _rotate(settings)
    assert result.exit_code == 0, result.output
    assert "5 key file(s) re-wrapped, 0 already under the new key, 5 in all" in result.output
    assert _sealed(settings) == data
    new = MasterKey(settings.master_key_path.read_bytes())
    assert new.id != old.id
    assert new.id in result.output
    assert not settings.master_key_path.with_name("master.key.next").exists()
    for path, context in files.items():
        content = path.read_bytes()
        with pytest.raises(SealError):
            unwrap_key(old, content, context)
        unwrap_key(new, content, context)

    # The running broker keeps answering: the cached answer, a fresh one, a new upload.
    assert world.query(**spec).json()["cells"] == cached
    assert _query(world).status_code == 200
    other = world.add_dataset(ENERGY, FIELDS)
    assert _query(world, world.contract_for(other)).status_code == 200


def test_an_interrupted_rotation_leaves_everything_readable_and_a_rerun_finishes_it(
    world: World, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.query(group_by=["town"], measures=[{"fn": "count"}])
    data = _sealed(settings)
    old = MasterKey(settings.master_key_path.read_bytes())
    real = connectors.crypto.write_atomic
    calls = count()

    def crash_after_one_key_file(path: Path, content: bytes, mode: int = 0o600) -> None:
        if next(calls) == 2:  # the new key, one key file, then the power fails
            raise OSError("simulated crash")
        real(path, content, mode)

    monkeypatch.setattr(connectors.crypto, "write_atomic", crash_after_one_key_file)
    assert _rotate(settings).exit_code != 0
    monkeypatch.undo()
    pending = settings.master_key_path.with_name("master.key.next")
    assert pending.exists()
    assert MasterKey(settings.master_key_path.read_bytes()).id == old.id
    under = [json.loads(p.read_bytes())["kek"] for p in _key_files(settings)]
    assert sorted(set(under)) == sorted({old.id, MasterKey(pending.read_bytes()).id})
    assert _query(world).status_code == 200  # mixed key files: both keys open them

    result = _rotate(settings)
    assert result.exit_code == 0, result.output
    assert "finished an interrupted rotation" in result.output
    assert "4 key file(s) re-wrapped, 1 already under the new key, 5 in all" in result.output
    assert not pending.exists()
    assert _sealed(settings) == data
    for path, context in _key_files(settings).items():
        with pytest.raises(SealError):
            unwrap_key(old, path.read_bytes(), context)
    assert _query(world).status_code == 200


def test_a_rotation_that_meets_a_bad_key_file_changes_nothing(
    world: World, settings: Settings
) -> None:
    key_file = _version(settings, world).with_suffix(".key")
    _flip(key_file, key_file.read_text().index('"wrapped": "') + 20)
    before = {p: p.read_bytes() for p in _key_files(settings)}
    master = settings.master_key_path.read_bytes()
    result = _rotate(settings)
    assert result.exit_code == 1
    assert "cannot be opened, nothing was rotated" in result.output
    assert settings.master_key_path.read_bytes() == master
    assert not settings.master_key_path.with_name("master.key.next").exists()
    assert {p: p.read_bytes() for p in _key_files(settings)} == before
