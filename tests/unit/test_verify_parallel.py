"""Deep verification in worker processes names exactly what the one-process pass names.

The thresholds are lowered so a small log is cut into many pieces across several chunks; each
damaged log is verified both ways and the whole results must be equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from audit import verify
from audit.verify import Chunk, Verification, verify_log
from tests.unit.test_audit_chain import _chain, _head, _signed, _stored

N = 300
Damage = Callable[[list[bytes]], list[bytes]]


def _flip(at: int) -> Damage:
    def damage(bodies: list[bytes]) -> list[bytes]:
        body = bytearray(bodies[at])
        body[len(body) // 2] ^= 0x01
        return [*bodies[:at], bytes(body), *bodies[at + 1:]]
    return damage


def _non_canonical(at: int) -> Damage:
    def damage(bodies: list[bytes]) -> list[bytes]:
        entry = json.loads(bodies[at])
        spaced = json.dumps(entry, sort_keys=True).encode()  # same content, not RFC 8785
        return [*bodies[:at], spaced, *bodies[at + 1:]]
    return damage


def _swap(at: int) -> Damage:
    return lambda b: [*b[:at], b[at + 1], b[at], *b[at + 2:]]


def _drop(at: int) -> Damage:
    return lambda b: [*b[:at], *b[at + 1:]]


DAMAGES: dict[str, Damage] = {
    "intact": list,
    "byte flip in the first piece": _flip(3),
    "byte flip across a chunk boundary": _flip(99),
    "byte flip in a later chunk": _flip(250),
    "not canonical": _non_canonical(140),
    "two faults: the first is named": lambda b: _non_canonical(200)(_flip(120)(b)),
    "swapped entries": _swap(170),
    "deleted entry": _drop(64),
    "truncated tail": lambda b: b[:280],
}


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "PARALLEL_MIN_ENTRIES", 50)
    monkeypatch.setattr(verify, "_PIECE", 16)


def _cut(whole: Chunk, size: int = 100) -> list[Chunk]:
    """Chunks of ``size`` entries, as a database or an export yields them."""
    return [whole.part(i, i + size) for i in range(0, len(whole.bodies), size)]


def _both(chunks: list[Chunk], **kw: object) -> tuple[Verification, Verification]:
    serial = verify_log(chunks, deep=True, parallel=False, **kw)  # type: ignore[arg-type]
    parallel = verify_log(chunks, deep=True, parallel=True, **kw)  # type: ignore[arg-type]
    return serial, parallel


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_parallel_deep_verification_names_the_same_first_fault(damage: str) -> None:
    good = _chain(N)
    bodies = DAMAGES[damage](good)
    checkpoints = [_signed(good, size) for size in (64, 200, N)]
    for chunks in (_cut(_stored(bodies)), _cut(Chunk(bodies))):
        serial, parallel = _both(chunks, checkpoints=checkpoints, head=_head(good))
        assert parallel == serial
        assert serial.valid == (damage == "intact")
    assert verify._pool is not None  # the workers did run


@pytest.mark.usefixtures("small_pieces")
def test_parallel_verification_of_a_fault_in_the_stored_columns_matches() -> None:
    bodies = _chain(N)
    chunk = _stored(bodies)
    assert chunk.leaf_hashes is not None
    chunk.leaf_hashes[150] = "0" * 64
    serial, parallel = _both([chunk])
    assert parallel == serial
    assert (serial.first_bad_seq, serial.reason) == (151, "leaf-hash-mismatch")


def test_small_logs_stay_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_workers(*_: object) -> None:
        raise AssertionError("workers started for a small log")

    monkeypatch.setattr(verify, "_run_parallel", no_workers)
    assert verify_log([Chunk(_chain(20))], deep=True).valid


def test_fast_verification_stays_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_workers(*_: object) -> None:
        raise AssertionError("workers started without deep")

    monkeypatch.setattr(verify, "PARALLEL_MIN_ENTRIES", 1)
    monkeypatch.setattr(verify, "_run_parallel", no_workers)
    assert verify_log([Chunk(_chain(20))]).valid
