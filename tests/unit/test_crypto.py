"""Envelope encryption at rest: sealed objects, wrapped data keys, the release-cache sealer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.domain.errors import DatasetUnreadable
from connectors.crypto import (
    HEADER,
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    Keyring,
    MasterKey,
    SealError,
    TextSealer,
    create_master_key,
    new_data_key,
    open_sealed,
    seal,
    unwrap_key,
    wrap_key,
    wrapping_key_id,
)

KEY = bytes(range(32))
MASTER = MasterKey(bytes(range(32, 64)))
OTHER = MasterKey(bytes(range(64, 96)))
CONTEXT = "3f2a/v1.parquet.enc"


def test_a_sealed_object_opens_to_its_plaintext_and_does_not_contain_it() -> None:
    plaintext = "浙江钱塘旭日纺织有限公司 Zhejiang Qiantang Sunrise Textiles".encode()
    blob = seal(KEY, plaintext, CONTEXT)
    assert blob.startswith(HEADER)
    assert len(blob) == len(HEADER) + NONCE_BYTES + len(plaintext) + TAG_BYTES
    assert plaintext not in blob
    assert b"Qiantang" not in blob
    assert open_sealed(KEY, blob, CONTEXT) == plaintext


def test_sealing_twice_gives_different_bytes() -> None:
    assert seal(KEY, b"same", CONTEXT) != seal(KEY, b"same", CONTEXT)


@given(data=st.binary(min_size=0, max_size=64), position=st.integers(min_value=0),
       bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_of_a_sealed_object_is_detected(data: bytes, position: int,
                                                         bit: int) -> None:
    blob = bytearray(seal(KEY, data, CONTEXT))
    blob[position % len(blob)] ^= 1 << bit
    with pytest.raises(SealError):
        open_sealed(KEY, bytes(blob), CONTEXT)


def test_every_truncation_and_extension_of_a_sealed_object_is_detected() -> None:
    blob = seal(KEY, b"0123456789" * 5, CONTEXT)
    for size in range(len(blob)):
        with pytest.raises(SealError):
            open_sealed(KEY, blob[:size], CONTEXT)
    with pytest.raises(SealError):
        open_sealed(KEY, blob + b"\x00", CONTEXT)


def test_a_sealed_object_opens_only_at_its_own_location_and_under_its_own_key() -> None:
    blob = seal(KEY, b"data", CONTEXT)
    with pytest.raises(SealError):
        open_sealed(KEY, blob, "3f2a/v2.parquet.enc")
    with pytest.raises(SealError):
        open_sealed(new_data_key(), blob, CONTEXT)


def test_a_wrapped_key_unwraps_only_under_its_master_key_and_for_its_location() -> None:
    data_key = new_data_key()
    key_file = wrap_key(MASTER, data_key, CONTEXT)
    assert data_key.hex() not in key_file.decode()
    assert wrapping_key_id(key_file) == MASTER.id
    assert unwrap_key(MASTER, key_file, CONTEXT) == data_key
    with pytest.raises(SealError):
        unwrap_key(MASTER, key_file, "3f2a/v2.parquet.enc")
    with pytest.raises(SealError):
        unwrap_key(OTHER, key_file, CONTEXT)
    relabelled = json.loads(key_file) | {"kek": OTHER.id}
    with pytest.raises(SealError):
        unwrap_key(OTHER, json.dumps(relabelled).encode(), CONTEXT)


def test_every_flipped_byte_of_a_key_file_is_detected() -> None:
    key_file = wrap_key(MASTER, new_data_key(), CONTEXT)
    for position in range(len(key_file)):
        flipped = bytearray(key_file)
        flipped[position] ^= 0x01
        with pytest.raises(SealError):
            unwrap_key(MASTER, bytes(flipped), CONTEXT)


def test_a_master_key_is_named_by_a_short_hash_and_never_shown() -> None:
    assert len(MASTER.id) == 16
    assert MASTER.id != OTHER.id
    assert MASTER.id == MasterKey(bytes(range(32, 64))).id
    assert MASTER.secret.hex() not in repr(MASTER)
    with pytest.raises(ValueError, match="exactly"):
        MasterKey(b"short")


def test_a_new_master_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    create_master_key(path)
    first = path.read_bytes()
    create_master_key(path)
    assert path.read_bytes() == first
    assert len(first) == KEY_BYTES
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_release_cache_sealer_binds_each_text_to_its_row(tmp_path: Path) -> None:
    create_master_key(tmp_path / "master.key")
    keyring = Keyring(tmp_path / "master.key")
    sealer = TextSealer(keyring, tmp_path / "cache.key")
    body = json.dumps({"cells": [{"key": {"town": "临平街道"}}]}, ensure_ascii=False)
    sealed = sealer.seal(body, context="release-cache/d/fp1")
    assert "临平街道" not in sealed
    assert "\\u4e34" not in sealed
    assert sealer.open(sealed, context="release-cache/d/fp1") == body
    again = TextSealer(keyring, tmp_path / "cache.key")  # the key file is reused
    assert again.open(sealed, context="release-cache/d/fp1") == body
    with pytest.raises(DatasetUnreadable):
        sealer.open(sealed, context="release-cache/d/fp2")
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(DatasetUnreadable):
        sealer.open(tampered, context="release-cache/d/fp1")
    with pytest.raises(DatasetUnreadable):
        sealer.open("not base64!", context="release-cache/d/fp1")
