"""Dataset versions at rest: Parquet, sealed with AES-256-GCM, under the data directory."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from broker.domain.datasets import ATOM_COLUMN, ATOM_OWNER_SHIFT, ENTITY_INDEX_COLUMN
from broker.domain.errors import DatasetUnreadable, PayloadTooLarge
from connectors.crypto import (
    KeyFileRef,
    Keyring,
    SealError,
    TooLarge,
    new_data_key,
    open_sealed,
    seal,
    write_atomic,
)

_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
SEALED = ".enc"  # a sealed Parquet file: <name>.parquet.enc
KEY_FILE = ".key"  # its wrapped data key beside it: <name>.parquet.key
_ENTITIES = "entities.parquet" + SEALED
_ATOMS = "atoms.parquet" + SEALED
#: The county entity register at the root: every enterprise any dataset holds, by entity value.
_REGISTER = "register.parquet" + SEALED
#: Threads that work on a version's columns at once.
THREADS = min(4, os.cpu_count() or 1)
#: Two keys for pandas' row hash: 128 bits name a row's content within its enterprise.
_ROW_HASH_KEYS = ("broker-atom-key1", "broker-atom-key2")


class ParquetStorage:
    """Seals each version once, under its own data key, and writes it atomically.

    A version is Parquet in memory only: on disk it is a sealed object (see
    ``connectors.crypto``) bound to its location, with its wrapped data key in a key file
    beside it. Reading decrypts and authenticates the whole file in memory and parses it from
    there; anything that does not authenticate raises :class:`DatasetUnreadable`, so a query
    on it fails closed. The entity index (plain enterprise ids) is sealed the same way, under
    a data key of its own that it keeps across rewrites (each with a fresh nonce), so that a
    rewrite replaces one file atomically.
    """

    def __init__(self, root: Path, keyring: Keyring) -> None:
        self.root = root.resolve()
        self.keyring = keyring
        self._index_lock = threading.Lock()
        self._dates: dict[tuple[str, tuple[str, ...]], dict[str, tuple[dt.date, ...]]] = {}

    def write(self, dataset_id: str, version: int, frame: pd.DataFrame | pa.Table,
              entity_field: str) -> str:
        """Store ``frame`` as ``dataset_id`` version ``version``; returns its location.

        Each row also gets its enterprise's index in the column ``#entity`` (no field name can
        contain '#'): the engine groups and joins by that integer, and the differencing guard
        keeps released populations as bitmaps of it. The index is the enterprise's number in
        the county entity register, the same in every dataset (see ``_register``), and kept
        for good; the dataset's entity index beside its versions maps its values to it. And
        each row gets its atom in ``#atom`` (see ``ATOM_COLUMN``), kept in the atom index.
        """
        if not _ID.fullmatch(dataset_id):
            raise ValueError("dataset id is not a safe path component")
        location = f"{dataset_id}/v{int(version)}.parquet{SEALED}"
        if isinstance(frame, pd.DataFrame):
            frame = pa.Table.from_pandas(frame, preserve_index=False)
        path = self.resolve(location)
        with ThreadPoolExecutor(1) as pool:
            hashes = pool.submit(row_hashes, frame, _ROW_HASH_KEYS)
            entities = self._entities(dataset_id, frame.column(entity_field))
            atoms, index_written = self._index_atoms(dataset_id, hashes.result(), entities,
                                                     pool)
            table = (frame
                     .append_column(ENTITY_INDEX_COLUMN, pa.array(entities, type=pa.uint32()))
                     .append_column(ATOM_COLUMN, pa.array(atoms, type=pa.int64())))
            data_key = new_data_key()
            try:
                self.keyring.write_key_file(_key_file(path), data_key, location)
                # Atoms are distinct: no dictionary, which Parquet would try and give up on.
                self._write_sealed(table, path, data_key, location,
                                   dictionary=[c for c in table.column_names
                                               if c != ATOM_COLUMN])
            except BaseException:
                _key_file(path).unlink(missing_ok=True)
                raise
            finally:
                index_written.result()
        return location

    def read(self, location: str, columns: Sequence[str] | None = None) -> pa.Table:
        """A stored version, decrypted and authenticated in memory, as an Arrow table."""
        return self.scan(location).to_table(
            columns=list(columns) if columns is not None else None)

    def scan(self, location: str) -> ds.Dataset:
        """A stored version, decrypted and authenticated in memory, as a lazy Arrow dataset.

        Nothing is decoded yet: a scan decodes only the columns and row groups a statement
        needs (DuckDB pushes projections and filters down), and strings as dictionaries,
        which halves their decoding time and memory. The plaintext lives as long as the
        dataset, in memory only.
        """
        _, plain = self._open(self.resolve(location), location)
        try:
            strings = [f.name for f in pq.read_schema(pa.BufferReader(plain))
                       if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
            parquet = ds.ParquetFileFormat(
                read_options=ds.ParquetReadOptions(dictionary_columns=strings))
            fragment = parquet.make_fragment(pa.BufferReader(plain))
            return ds.FileSystemDataset([fragment], fragment.physical_schema, parquet)
        except (pa.ArrowException, ValueError):  # authentic, yet not Parquet: fail closed
            raise DatasetUnreadable("A stored dataset version is not readable; nothing was "
                                    "computed.") from None

    def _open(self, path: Path, location: str) -> tuple[bytes, bytes]:
        """The data key and the plaintext of the sealed file ``path``."""
        try:
            data_key = self.keyring.read_key_file(_key_file(path), location)
            return data_key, open_sealed(data_key, path.read_bytes(), location)
        except (SealError, OSError):
            raise DatasetUnreadable("A stored dataset version failed decryption or its "
                                    "integrity check; nothing was computed.") from None

    def _entities(self, dataset_id: str, column: pa.ChunkedArray) -> np.ndarray:
        """Each row's enterprise index (new enterprises numbered on in the entity index)."""
        values = pc.unique(column)
        distinct = pd.Series(values.to_pylist(), dtype=_HASHED_DTYPES.get(column.type))
        index = self._index_entities(dataset_id, distinct)
        positions = pd.Index(index.index).get_indexer(distinct)
        if (positions < 0).any():
            raise ValueError("an entity is missing from the entity index")
        rows = pc.index_in(column, value_set=values).to_numpy()
        return np.asarray(index.to_numpy(dtype="uint32")[positions][rows])

    def _index_entities(self, dataset_id: str, entities: pd.Series) -> pd.Series:
        path = self.entity_index(dataset_id)
        location = f"{dataset_id}/{_ENTITIES}"
        with self._index_lock:
            if path.exists():
                data_key, plain = self._open(path, location)
                known = pq.read_table(pa.BufferReader(plain)).to_pandas()
            else:  # a new dataset, or one whose first registration was undone
                known, data_key = None, new_data_key()
                self.keyring.write_key_file(_key_file(path), data_key, location)
            fresh = pd.Series(entities.dropna().unique())
            if known is not None:
                fresh = fresh[~fresh.isin(known["e"])]
            added = pd.DataFrame({"e": fresh.sort_values(ignore_index=True)})
            added["i"] = pd.Series(self._register(added["e"]), dtype="uint32")
            merged = added if known is None else pd.concat([known, added], ignore_index=True)
            if not added.empty:
                self._write_sealed(pa.Table.from_pandas(merged, preserve_index=False), path,
                                   data_key, location)
        return pd.Series(merged["i"].to_numpy(), index=merged["e"])

    def _register(self, entities: pd.Series) -> np.ndarray:
        """The county numbers of ``entities``, those new to the county numbered on (call with
        the index lock held).

        One register for every dataset, so that an enterprise has the same index in each: the
        engine joins providers' data on it, and k, dominance and the release audit count the
        same enterprise once across sources. It is keyed by the entity value's text (an
        integer code and the same digits as text are one enterprise) and sealed like the
        indexes; it holds identifiers only, and keeps them (an upload that is undone leaves
        its enterprises registered, which tells nothing about any figure).
        """
        keys = entities.astype(str).to_numpy(dtype=object)
        if not len(keys):
            return np.zeros(0, dtype=np.uint32)
        with _file_lock(self.root / ".register.lock"):  # other broker processes too
            return self._number(keys)

    def _number(self, keys: np.ndarray) -> np.ndarray:
        path = self.resolve(_REGISTER)
        if not path.exists() and any(self.root.glob(f"*/{_ENTITIES}")):
            # Datasets numbered before the register (or a register lost): numbering again
            # from 0 would give their enterprises' numbers to others. Fail closed.
            raise DatasetUnreadable("The county entity register is missing while datasets "
                                    "are stored; nothing was stored.")
        if path.exists():
            data_key, plain = self._open(path, _REGISTER)
            known = pq.read_table(pa.BufferReader(plain)).to_pandas()
        else:
            known, data_key = None, new_data_key()
            self.keyring.write_key_file(_key_file(path), data_key, _REGISTER)
        numbers = pd.Series(
            known["c"].to_numpy(), index=known["e"].to_numpy(dtype=object)
        ) if known is not None else pd.Series([], dtype="uint32")
        fresh = pd.unique(keys[~pd.Index(keys).isin(numbers.index)])
        if len(fresh):
            start = int(numbers.max()) + 1 if len(numbers) else 0
            if start + len(fresh) > 1 << 32:
                raise PayloadTooLarge("The county entity register is full.")
            added = pd.Series(np.arange(start, start + len(fresh), dtype=np.uint32),
                              index=fresh)
            numbers = pd.concat([numbers, added])
            self._write_sealed(pa.table({"e": pa.array(numbers.index.to_numpy(dtype=object),
                                                       pa.string()),
                                         "c": pa.array(numbers.to_numpy(), pa.uint32())}),
                               path, data_key, _REGISTER)
        return np.asarray(numbers.loc[keys].to_numpy(dtype=np.uint32))

    def _index_atoms(self, dataset_id: str, hashes: Sequence[np.ndarray],
                     entities: np.ndarray, pool: ThreadPoolExecutor
                     ) -> tuple[np.ndarray, Future[None]]:
        """Each row's atom: a row whose enterprise and values an earlier version already held
        keeps that row's atom; identical rows of one enterprise are told apart by their order.

        The atom index (sealed beside the versions, like the entity index) keeps, per atom, its
        enterprise, a 128-bit hash of its values (``hashes``: ``row_hashes``) and its
        occurrence: never a value. Its new state is written on ``pool`` while the caller
        writes the version; the index lock is held until it is written (a plain lock may be
        released by the thread that writes), so that no other version is numbered against
        the index it replaces.
        """
        keys = pd.DataFrame({"e": entities.astype("uint32"), "h1": hashes[0], "h2": hashes[1]})
        keys["o"] = _occurrences(keys)
        path = self.resolve(f"{dataset_id}/{_ATOMS}")
        location = f"{dataset_id}/{_ATOMS}"
        self._index_lock.acquire()
        try:
            if path.exists():
                data_key, plain = self._open(path, location)
                known = pq.read_table(pa.BufferReader(plain)).to_pandas()
            else:
                known, data_key = None, new_data_key()
                self.keyring.write_key_file(_key_file(path), data_key, location)
            local, table = _number_atoms(keys, known)
        except BaseException:
            self._index_lock.release()
            raise
        if table is None:
            self._index_lock.release()
            written: Future[None] = Future()
            written.set_result(None)
        else:
            written = pool.submit(self._write_index_and_release, table, path, data_key,
                                  location)
        return np.asarray(keys["e"].to_numpy(dtype="int64") << ATOM_OWNER_SHIFT | local), written

    def _write_index_and_release(self, table: pa.Table, path: Path, data_key: bytes,
                                 location: str) -> None:
        try:
            # Hashes are random: no dictionary, which Parquet would try and give up on.
            self._write_sealed(table, path, data_key, location, dictionary=["e", "o", "a"])
        finally:
            self._index_lock.release()

    def drop_indexes(self, dataset_id: str) -> None:
        """Delete the entity and atom indexes of a dataset whose first version did not
        commit (their key files go with the version's, in ``remove``)."""
        for name in (_ENTITIES, _ATOMS):
            self.resolve(f"{dataset_id}/{name}").unlink(missing_ok=True)

    def dates(self, location: str, fields: Sequence[str]) -> dict[str, tuple[dt.date, ...]]:
        """The distinct dates of each date field of a stored version, sorted (kept per
        version: versions never change)."""
        if not fields:
            return {}
        key = (location, tuple(fields))
        with self._index_lock:
            cached = self._dates.get(key)
        if cached is None:
            table = self.read(location, columns=fields)
            cached = {
                name: tuple(sorted(d for d in pc.unique(table.column(name)).to_pylist()
                                   if d is not None))
                for name in fields
            }
            with self._index_lock:
                self._dates[key] = cached
        return cached

    def entity_index(self, dataset_id: str) -> Path:
        """Where the dataset's entity index lives (sealed; its key file beside it)."""
        if not _ID.fullmatch(dataset_id):
            raise ValueError("dataset id is not a safe path component")
        return self.resolve(f"{dataset_id}/{_ENTITIES}")

    def key_files(self) -> Iterator[KeyFileRef]:
        """Every key file under the root with the location its data key is bound to."""
        for path in sorted(self.root.rglob(f"*{KEY_FILE}")):
            if path.name.startswith("."):  # a temporary file
                continue
            sealed = path.with_suffix(SEALED)
            yield path, sealed.relative_to(self.root).as_posix()

    def _write_sealed(self, table: pa.Table, target: Path, data_key: bytes,
                      location: str, dictionary: bool | list[str] = True) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, use_dictionary=dictionary)
        try:
            blob = seal(data_key, memoryview(sink.getvalue()).cast("B"), location)
        except TooLarge:
            raise PayloadTooLarge("The dataset version is over 2 GiB as Parquet, the most "
                                  "one sealed file holds.") from None
        write_atomic(target, blob)

    def remove(self, location: str) -> None:
        """Delete a stored version and its key file (used to undo a registration that did not
        commit); an orphaned entity index key file goes too."""
        path = self.resolve(location)
        path.unlink(missing_ok=True)
        _key_file(path).unlink(missing_ok=True)
        if path.parent != self.root and path.parent.exists():
            for name in (_ENTITIES, _ATOMS):
                index = path.parent / name
                if not index.exists():
                    _key_file(index).unlink(missing_ok=True)
            if not any(path.parent.iterdir()):
                path.parent.rmdir()

    def resolve(self, location: str) -> Path:
        """Absolute path of a location, which must stay inside the storage root."""
        path = (self.root / location).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("location escapes the storage root")
        return path


#: pandas' dtype of each stored type in conform's frame, whose row hashes name atoms.
_HASHED_DTYPES: dict[pa.DataType, str] = {
    pa.large_string(): "string", pa.string(): "string", pa.int64(): "Int64",
    pa.bool_(): "boolean", pa.date32(): "object",
}


def row_hashes(table: pa.Table, keys: Sequence[str]) -> list[np.ndarray]:
    """``pd.util.hash_pandas_object(frame, index=False, hash_key=key)`` for each of ``keys``,
    of the frame conform makes of ``table``'s data (the hashes the atoms of earlier versions
    were named by), column by column: a column's hash is computed once per distinct value and
    taken for its rows."""

    def hashed(column: pa.ChunkedArray) -> list[np.ndarray]:
        values, rows = _hash_inputs(column)
        once = [pd.util.hash_pandas_object(values, index=False, hash_key=key).to_numpy()
                for key in keys]
        return once if rows is None else [h[rows] for h in once]

    # Arrow's kernels and numpy's gathers run outside the GIL.
    with ThreadPoolExecutor(THREADS) as pool:
        columns = list(pool.map(hashed, table.columns))
    return [_combine([c[k] for c in columns], table.num_rows) for k in range(len(keys))]


def _combine(hashes: list[np.ndarray], rows: int) -> np.ndarray:
    """pandas.core.util.hashing.combine_hash_arrays, as hash_pandas_object combines columns."""
    mult = np.uint64(1000003)
    out = np.zeros(rows, dtype=np.uint64) + np.uint64(0x345678)
    for i, column in enumerate(hashes):
        inverse = len(hashes) - i
        out ^= column
        out *= mult
        mult += np.uint64(82520 + inverse + inverse)
    out += np.uint64(97531)
    return out


def _hash_inputs(column: pa.ChunkedArray) -> tuple[pd.Series, np.ndarray | None]:
    """What to hash for a column: its values in conform's pandas dtype, or its distinct
    values (and null) with each row's position among them."""
    if pa.types.is_floating(column.type):
        return pd.Series(column.to_numpy()), None
    dtype = "object" if pa.types.is_decimal(column.type) else _HASHED_DTYPES.get(column.type)
    if dtype is None:  # not a type conform makes: the rows as pandas converts them
        return pd.Series(column.to_pandas()), None
    distinct = pc.unique(column).drop_null()
    rows = pc.index_in(column, value_set=distinct).fill_null(len(distinct)).to_numpy()
    return pd.Series([*distinct.to_pylist(), None], dtype=dtype), rows


def _number_atoms(keys: pd.DataFrame, known: pd.DataFrame | None
                  ) -> tuple[np.ndarray, pa.Table | None]:
    """Each row's atom number within its enterprise (``keys``: e, h1, h2, o), and the atom
    index to store (None when no row is new): a row ``known`` holds keeps its number, new
    ones are numbered on after their enterprise's last."""
    if known is None:  # every row is a new atom, numbered per enterprise in order
        local = _ranks(keys["e"].to_numpy())
        _check_atoms(local)
        return local, pa.Table.from_pandas(keys.assign(a=local.astype("uint32")),
                                           preserve_index=False)
    merged = keys.merge(known, on=["e", "h1", "h2", "o"], how="left")
    fresh = merged["a"].isna()
    table = None
    if fresh.any():
        start = known.groupby("e")["a"].max() + 1
        added = merged.loc[fresh, ["e", "h1", "h2", "o"]].copy()
        added["a"] = (added["e"].map(start).fillna(0)
                      + _ranks(added["e"].to_numpy())).astype("uint32")
        _check_atoms(added["a"].to_numpy())
        merged.loc[fresh, "a"] = added["a"]
        table = pa.Table.from_pandas(pd.concat([known, added], ignore_index=True),
                                     preserve_index=False)
    return merged["a"].astype("int64").to_numpy(), table


def _check_atoms(local: np.ndarray) -> None:
    if len(local) and int(local.max()) >> ATOM_OWNER_SHIFT:
        raise PayloadTooLarge("An enterprise has more rows over all versions than the release "
                              "audit can tell apart.")


def _ranks(groups: np.ndarray) -> np.ndarray:
    """Each row's place among the rows of its group so far (``groupby(...).cumcount()``)."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(groups)])
    ranks = np.empty(len(groups), dtype=np.int64)
    ranks[order] = np.arange(len(groups)) - np.repeat(starts, sizes)
    return ranks


def _occurrences(keys: pd.DataFrame) -> np.ndarray:
    """Each row's occurrence among the earlier rows of the same enterprise and hashes (the
    cumcount over ``e``, ``h1``, ``h2``), counted only where ``h1`` repeats: rows sharing
    the top 22 bits of ``h1`` with another are the candidates, sorted to find the repeats."""
    h1 = keys["h1"].to_numpy()
    occurrences = np.zeros(len(h1), dtype=np.uint32)
    buckets = (h1 >> np.uint64(42)).astype(np.intp)
    candidates = np.flatnonzero(np.bincount(buckets, minlength=1 << 22)[buckets] > 1)
    if not len(candidates):
        return occurrences
    shared = h1[candidates]
    ordered = np.sort(shared)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(repeated):
        rows = candidates[np.isin(shared, repeated)]
        occurrences[rows] = keys.iloc[rows].groupby(["e", "h1", "h2"]).cumcount().to_numpy()
    return occurrences


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing) held by this process for the block:
    broker processes sharing a data directory take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _key_file(sealed: Path) -> Path:
    """``<name>.parquet.enc`` -> ``<name>.parquet.key``."""
    return sealed.with_suffix(KEY_FILE)
