"""Key files generated on first start, by several processes at once (``broker serve --workers
N``, pods on one volume): the first one's file stands, whole, and every process uses it."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import connectors.crypto
from broker.settings import Settings
from broker.store.keys import jwt_secret, master_keyring, pseudonym_secret, release_sealer
from connectors.crypto import Keyring, TextSealer, create_exclusive, create_master_key


def _settings(data: Path) -> Settings:
    return Settings(data_dir=data, jwt_secret=None)


def test_create_exclusive_never_replaces_a_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret"
    assert create_exclusive(path, b"first") is True
    assert create_exclusive(path, b"second") is False
    assert path.read_bytes() == b"first"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]


def test_a_release_cache_key_made_meanwhile_by_another_process_is_the_one_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between one process's check that the key file is missing and its write, another
    process writes its own: both must end up with the key on disk, or one process's sealed
    answers would never open again (in the other process, or after a restart)."""
    create_master_key(tmp_path / "master.key")
    keyring = Keyring(tmp_path / "master.key")
    key_file = tmp_path / "release-cache.key"
    real = connectors.crypto.wrap_key
    others: list[TextSealer] = []
    raced = [False]

    def other_process_first(*args: Any, **kwargs: Any) -> bytes:
        if not raced[0]:  # the other process wins the race, once
            raced[0] = True
            others.append(TextSealer(keyring, key_file))
        return real(*args, **kwargs)

    monkeypatch.setattr(connectors.crypto, "wrap_key", other_process_first)
    late = TextSealer(keyring, key_file)
    (early,) = others
    monkeypatch.setattr(connectors.crypto, "wrap_key", real)
    restarted = TextSealer(keyring, key_file)
    for sealer in (early, late):
        sealed = sealer.seal("answer", context="release-cache/d/f")
        for reader in (early, late, restarted):
            assert reader.open(sealed, context="release-cache/d/f") == "answer"


def test_an_empty_generated_jwt_secret_is_refused_not_used(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = settings.keys_dir / "jwt-secret"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="at least 32"):
        jwt_secret(settings)


def _start(data: str, barrier: Any, out: Any) -> None:
    settings = _settings(Path(data))
    barrier.wait()
    sealer = release_sealer(settings, master_keyring(settings))
    out.put((pseudonym_secret(settings).hex(), jwt_secret(settings),
             sealer.seal("answer", context="c")))


def test_workers_starting_together_share_every_generated_key(tmp_path: Path) -> None:
    processes = 6
    context = multiprocessing.get_context("fork")
    barrier, out = context.Barrier(processes), context.Queue()
    started = [context.Process(target=_start, args=(str(tmp_path), barrier, out))
               for _ in range(processes)]
    for process in started:
        process.start()
    results = [out.get(timeout=60) for _ in started]
    for process in started:
        process.join(timeout=60)
        assert process.exitcode == 0
    settings = _settings(tmp_path)
    assert {r[0] for r in results} == {pseudonym_secret(settings).hex()}
    assert {r[1] for r in results} == {jwt_secret(settings)}
    sealer = release_sealer(settings, master_keyring(settings))
    assert {sealer.open(r[2], context="c") for r in results} == {"answer"}
    assert not [p for p in settings.keys_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_secret_from_the_environment_is_used_as_given(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, jwt_secret=SecretStr("s" * 32))
    assert jwt_secret(settings) == "s" * 32
    assert not (settings.keys_dir / "jwt-secret").exists()
