"""Verify a stored or exported log: every leaf, the chain, the tree and the signed checkpoints.

The verifier trusts nothing it reads but the public key it is given (and, optionally, one
checkpoint the caller already trusts). It recomputes every leaf hash from the entry's bytes,
follows ``prev_hash`` from the genesis hash, recomputes the RFC 6962 root at the size of every
signed checkpoint, and names the first fault it meets:

- ``bad-entry``: an entry's bytes are not what the log committed to (hash, chain, seq);
- ``gap``: a sequence number is missing;
- ``reorder``: an entry stands at another entry's position;
- ``rollback``: the log is shorter than a signed checkpoint (or the head) says it was;
- ``fork``: the log is self-consistent but its tree is not the one a signed checkpoint
  commits to (a rewrite with every hash recomputed), or two signed checkpoints disagree;
- ``bad-checkpoint``: a checkpoint that is malformed or not signed by the key;
- ``unsigned-tail``: (exports only, see :func:`require_signed_tail`) entries after the last
  signed checkpoint, which nothing proves: a cut after them would not be seen.

Entries are checked a chunk at a time with C-level hashing (``map`` over ``hashlib``); only a
chunk that fails a check is walked entry by entry, to name the fault exactly. A deep
verification of a large log has its entries' hashes, checks and re-encodings computed in
worker processes, a few pieces ahead, while this process walks the chunks in order: every
result, the first bad entry and its reason included, is the one the serial pass gives.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from audit import merkle
from audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier
from audit.entry import GENESIS_HASH, encode

GENESIS = bytes.fromhex(GENESIS_HASH)
_PREV = re.compile(rb'"prev_hash":"([0-9a-f]{64})"')
_PREV_AT = b'"prev_hash":"%s"'
_SEQ_AT = b',"seq":%d,"ts":"'
_SEQ = re.compile(rb',"seq":(0|[1-9][0-9]{0,18}),"ts":"')
_sha256 = hashlib.sha256
_digest = type(hashlib.sha256()).digest
_LEAF = b"\x00".__add__
_NODE = b"\x01".__add__


class Fault(StrEnum):
    """What kind of damage a verification found."""

    BAD_ENTRY = "bad-entry"
    GAP = "gap"
    REORDER = "reorder"
    ROLLBACK = "rollback"
    FORK = "fork"
    BAD_CHECKPOINT = "bad-checkpoint"
    UNSIGNED_TAIL = "unsigned-tail"


#: Exit codes of ``broker audit verify``: 0 valid, 1 could not read, 2 usage, then one per fault.
EXIT_CODES: dict[Fault, int] = {
    Fault.BAD_ENTRY: 3,
    Fault.GAP: 4,
    Fault.REORDER: 5,
    Fault.ROLLBACK: 6,
    Fault.FORK: 7,
    Fault.BAD_CHECKPOINT: 8,
    Fault.UNSIGNED_TAIL: 9,
}


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive stored entries as parallel lists; the column lists are None in an export."""

    bodies: list[bytes]
    seqs: list[int] | None = None
    leaf_hashes: list[str] | None = None
    prev_hashes: list[str] | None = None

    def part(self, start: int, stop: int) -> Chunk:
        """Entries ``start`` to ``stop`` (list indices) of this chunk."""
        return Chunk(self.bodies[start:stop],
                     None if self.seqs is None else self.seqs[start:stop],
                     None if self.leaf_hashes is None else self.leaf_hashes[start:stop],
                     None if self.prev_hashes is None else self.prev_hashes[start:stop])


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint whose signature verified, and where it was found."""

    checkpoint: Checkpoint
    note: str
    source: str


@dataclass(frozen=True, slots=True)
class Verification:
    """Outcome of a verification run."""

    valid: bool
    size: int
    root: str
    fault: Fault | None = None
    first_bad_seq: int | None = None
    reason: str | None = None
    detail: str | None = None
    checkpoints: int = 0
    latest_checkpoint: int | None = None
    unproven: int = 0  # entries after the latest signed checkpoint (when valid)

    @property
    def exit_code(self) -> int:
        """0 when valid, else the fault's exit code."""
        return 0 if self.fault is None else EXIT_CODES[self.fault]

    def as_json(self) -> dict[str, Any]:
        """The ``GET /v1/audit/verify`` answer."""
        out: dict[str, Any] = {
            "valid": self.valid,
            "size": self.size,
            "root": self.root,
            "checkpoints_checked": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "unproven": self.unproven,
        }
        if not self.valid:
            out |= {"kind": str(self.fault), "first_bad_seq": self.first_bad_seq,
                    "reason": self.reason, "detail": self.detail}
        return out


@dataclass
class _Found(Exception):
    """Raised inside the walk when a fault is found."""

    fault: Fault
    seq: int | None
    reason: str
    detail: str = ""


@dataclass
class Head:
    """What the store's head row claims: size, last leaf hash and packed frontier."""

    size: int
    head_hash: str
    frontier: bytes | None = None


def open_checkpoints(
    notes: Iterable[tuple[str, str]], verifier: NoteVerifier, origin: str | None = None
) -> list[SignedCheckpoint]:
    """Verify (note, source) pairs; CheckpointError names the first one that fails."""
    opened = []
    for note, source in notes:
        try:
            checkpoint = verifier.checkpoint(note, origin)
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}") from exc
        opened.append(SignedCheckpoint(checkpoint, note, source))
    return opened


@dataclass
class _Walk:
    """State of one verification: position, last leaf, tree, the checkpoints still ahead."""

    pending: list[SignedCheckpoint]
    deep: bool
    frontier: merkle.Frontier = field(default_factory=merkle.Frontier)
    last: bytes = GENESIS
    checked: int = 0
    good_size: int = 0  # the largest checkpointed size whose root matched
    walked: int = 0  # entries of the current chunk the slow walk has passed
    leaves: list[bytes] | None = None  # every leaf hash, when the caller checks stored nodes

    # -- fast path ---------------------------------------------------------------------------

    def chunk(self, chunk: Chunk, rest: Iterator[Chunk], head: Head | None,
              checked: _Checked | None = None) -> None:
        """Verify the next chunk; ``checked`` is its :func:`_check_chunk` result if a worker
        computed it already."""
        bodies = chunk.bodies
        start = self.frontier.size
        if checked is None:
            checked = _check_chunk(chunk, start, self.last)
        ok, leaves, deep_faults = checked
        if not ok or self.deep:
            try:
                self._walk(chunk, leaves, rest, head, deep_faults)
            except _Found:
                self._grow(leaves[:self.walked])  # the entries before the fault did verify
                raise
            if not ok:  # fail closed: the fast check failed, so the walk must have named why
                raise _Found(Fault.BAD_ENTRY, start + 1, "unexplained",
                             f"entries {start + 1}..{start + len(bodies)} do not check")
        self.last = leaves[-1]
        if self.leaves is not None:
            self.leaves.extend(leaves)
        self._grow(leaves)

    def _grow(self, leaves: Sequence[bytes]) -> None:
        """Add leaves to the tree, stopping at every checkpoint size to compare roots."""
        at = 0
        while at < len(leaves):
            take = len(leaves) - at
            if self.pending:
                take = min(take, self.pending[0].checkpoint.size - self.frontier.size)
            _extend(self.frontier, leaves[at:at + take])
            at += take
            self._check_reached()

    def _check_reached(self) -> None:
        while self.pending and self.pending[0].checkpoint.size == self.frontier.size:
            signed = self.pending.pop(0)
            if self.frontier.root() != signed.checkpoint.root:
                raise _Found(
                    Fault.FORK, self.good_size + 1, "checkpoint-root-mismatch",
                    f"the tree of the first {signed.checkpoint.size} entries differs from the "
                    f"signed checkpoint ({signed.source}): an entry between "
                    f"{self.good_size + 1} and {signed.checkpoint.size} was rewritten")
            self.checked += 1
            self.good_size = signed.checkpoint.size

    # -- slow path: walk entry by entry to name the fault --------------------------------------

    def _walk(self, chunk: Chunk, leaves: list[bytes], rest: Iterator[Chunk],
              head: Head | None, deep_faults: dict[int, str] | None = None) -> None:
        start = self.frontier.size
        last = self.last
        for i, body in enumerate(chunk.bodies):
            self.walked = i
            position = start + i + 1
            leaf = leaves[i]
            column_seq = chunk.seqs[i] if chunk.seqs is not None else None
            body_seq = _body_seq(body)
            if column_seq is not None and column_seq != position:
                self._missing(position, chunk, i, rest)
            if chunk.leaf_hashes is not None and chunk.leaf_hashes[i] != leaf.hex():
                raise _Found(Fault.BAD_ENTRY, position, "leaf-hash-mismatch",
                             f"entry {position}'s bytes do not hash to its stored leaf hash")
            if body_seq is None:
                raise _Found(Fault.BAD_ENTRY, position, "entry-unparseable",
                             f"entry {position} has no readable seq")
            prev = _body_prev(body)
            if body_seq != position:
                if prev == last:  # it chains here, so it is this entry with its seq changed
                    raise _Found(Fault.BAD_ENTRY, position, "seq-mismatch",
                                 f"entry {position} says it is entry {body_seq}")
                if column_seq is None and body_seq > position:
                    self._missing(position, chunk, i, rest)
                raise _Found(Fault.REORDER, position, "entry-out-of-place",
                             f"position {position} holds entry {body_seq}")
            if prev != last:
                raise self._broken_link(position, chunk, leaves, i, rest, head)
            if chunk.prev_hashes is not None and chunk.prev_hashes[i] != (prev or b"").hex():
                raise _Found(Fault.BAD_ENTRY, position, "prev-hash-column-mismatch",
                             f"entry {position}'s stored prev_hash differs from its body's")
            if self.deep:
                reason = deep_check(body) if deep_faults is None else deep_faults.get(i)
                if reason is not None:
                    raise _Found(Fault.BAD_ENTRY, position, reason,
                                 f"entry {position} is not a canonical entry")
            last = leaf
        self.last = last

    def _missing(self, position: int, chunk: Chunk, i: int, rest: Iterator[Chunk]) -> None:
        """Entry ``position`` is not where it should be: later in the log, or gone."""
        seen = _scan_for(position, chunk, i, rest)
        if seen:
            raise _Found(Fault.REORDER, position, "entry-out-of-place",
                         f"entry {position} appears later in the log")
        raise _Found(Fault.GAP, position, "seq-gap", f"entry {position} is missing")

    def _broken_link(self, position: int, chunk: Chunk, leaves: list[bytes], i: int,
                     rest: Iterator[Chunk], head: Head | None) -> _Found:
        """Entry ``position`` does not chain to its predecessor: which one was altered?

        If the next entry still chains to this one, this entry is intact and its predecessor's
        bytes changed; otherwise this entry itself changed (its ``prev_hash`` included).
        """
        if position == 1:
            return _Found(Fault.BAD_ENTRY, 1, "prev-hash-mismatch",
                          "entry 1 does not start from the genesis hash")
        nxt = _following(chunk, i, rest)
        follows = (_body_prev(nxt) == leaves[i]) if nxt is not None else (
            head is not None and head.size == position and head.head_hash == leaves[i].hex())
        bad = position - 1 if follows else position
        return _Found(Fault.BAD_ENTRY, bad, "prev-hash-mismatch",
                      f"entry {position} does not chain to entry {position - 1}; "
                      f"entry {bad}'s bytes were changed")


#: (the fast checks passed, every leaf hash, the deep faults by index within the chunk or None)
_Checked = tuple[bool, list[bytes], dict[int, str] | None]


def _check_chunk(chunk: Chunk, start: int, last: bytes) -> _Checked:
    """Leaf hashes and the C-level checks of one chunk whose first entry is ``start + 1`` and
    whose predecessor's leaf hash is ``last`` (the deep check is left to the walk)."""
    leaves = list(map(_digest, map(_sha256, map(_LEAF, chunk.bodies))))
    return _checks(chunk, leaves, start, last), leaves, None


def _checks(chunk: Chunk, leaves: list[bytes], start: int, last: bytes) -> bool:
    """Each body names its predecessor's leaf hash and its own position, and the stored
    columns agree; any miss sends the chunk to the walk, which reads each entry."""
    bodies = chunk.bodies
    n = len(bodies)
    hexes = list(map(binascii.hexlify, leaves))
    links = [binascii.hexlify(last), *hexes[:-1]]
    return (
        all(map(bytes.__contains__, bodies, map(_PREV_AT.__mod__, links)))
        and all(map(bytes.__contains__, bodies,
                    map(_SEQ_AT.__mod__, range(start + 1, start + 1 + n))))
        and (chunk.seqs is None or chunk.seqs == list(range(start + 1, start + 1 + n)))
        and (chunk.leaf_hashes is None
             or list(map(str.encode, chunk.leaf_hashes)) == hexes)
        and (chunk.prev_hashes is None
             or list(map(str.encode, chunk.prev_hashes)) == links)
    )


def _check_piece(piece: Chunk, start: int, last: bytes
                 ) -> tuple[bool, bytes, dict[int, str]]:
    """:func:`_check_chunk` with ``deep`` in a worker process: the leaves (travelling back as
    one string) and every entry's canonical-form check, by index within the piece."""
    leaves = list(map(_digest, map(_sha256, map(_LEAF, piece.bodies))))
    faults = {i: reason for i, reason in enumerate(map(deep_check, piece.bodies))
              if reason is not None}
    return _checks(piece, leaves, start, last), b"".join(leaves), faults


#: Deep verification (each entry re-encoded, about 30 times the cost of hashing it) runs in
#: worker processes once a chunk holds this many entries; below that, starting them costs more
#: than it saves. The fast pass stays in this process: handing an entry to another process
#: (copying its bytes there) costs as much as hashing and checking it here (tests/bench/audit.py).
PARALLEL_MIN_ENTRIES = 16384
_PIECE = 4096  # entries per task
_AHEAD = 4  # tasks queued per worker

_pool: ProcessPoolExecutor | None = None
_pool_guard = threading.Lock()


def _workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def _executor() -> ProcessPoolExecutor:
    """The verifier's worker processes, started on first use and kept for later runs.

    ``forkserver`` (``spawn`` where there is none): forking a threaded server is unsafe.
    """
    global _pool
    with _pool_guard:
        if _pool is None:
            method = ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                      else "spawn")
            _pool = ProcessPoolExecutor(_workers(), mp_context=multiprocessing.get_context(method))
        return _pool


_PieceResult = Future[tuple[bool, bytes, dict[int, str]]]


def _run_parallel(walk: _Walk, upcoming: Iterator[Chunk], head: Head | None) -> None:
    """Feed every chunk to ``walk`` in order, its checks computed by the workers ahead.

    A chunk is cut into pieces; a piece's checks need only its start position and its
    predecessor's leaf hash (the hash of the entry before it), both known before anything
    before it is verified. The pieces' results are joined back into their chunk's (the fast
    checks are per entry, so all pieces passing is the chunk passing), and the walk takes the
    chunks in order exactly as in one process: if one fails, the walk stops there and nothing
    computed ahead is used.
    """
    pool = _executor()
    queued: deque[tuple[Chunk, list[_PieceResult]]] = deque()
    position, last = walk.frontier.size, walk.last
    tasks = 0

    def submit() -> bool:
        nonlocal position, last, tasks
        for chunk in upcoming:
            if not chunk.bodies:
                continue
            futures = []
            for at in range(0, len(chunk.bodies), _PIECE):
                piece = chunk.part(at, at + _PIECE)
                futures.append(pool.submit(_check_piece, piece, position, last))
                position += len(piece.bodies)
                last = _digest(_sha256(_LEAF(piece.bodies[-1])))
            queued.append((chunk, futures))
            tasks += len(futures)
            return True
        return False

    try:
        while tasks < _AHEAD * _workers() and submit():
            pass
        while queued:
            chunk, futures = queued.popleft()
            tasks -= len(futures)
            ok, leaves, faults = True, list[bytes](), dict[int, str]()
            for n, future in enumerate(futures):
                piece_ok, piece_leaves, piece_faults = future.result()
                ok = ok and piece_ok
                leaves += _split(piece_leaves)
                faults |= {n * _PIECE + i: reason for i, reason in piece_faults.items()}
            while tasks < _AHEAD * _workers() and submit():
                pass
            rest = itertools.chain([c for c, _ in queued], upcoming)
            walk.chunk(chunk, rest, head, (ok, leaves, faults))
    finally:
        for _, futures in queued:
            for future in futures:
                future.cancel()


def _split(leaves: bytes) -> list[bytes]:
    return [leaves[i:i + 32] for i in range(0, len(leaves), 32)]


def _extend(frontier: merkle.Frontier, leaves: Sequence[bytes]) -> None:
    """Add many leaves: whole aligned blocks are hashed level by level in C loops."""
    at, n = 0, len(leaves)
    while at < n:
        size = frontier.size
        align = size & -size if size else 1 << 62
        block = min(align, 1 << ((n - at).bit_length() - 1))
        if block < 16:
            for leaf in leaves[at:at + block]:
                frontier.add(leaf)
        else:
            level = list(leaves[at:at + block])
            while len(level) > 1:
                level = list(map(_digest, map(_sha256, map(
                    bytes.__add__, map(_NODE, level[0::2]), level[1::2]))))
            frontier.add_perfect(block.bit_length() - 1, level[0])
        at += block


def _body_seq(body: bytes) -> int | None:
    match = _SEQ.search(body)
    return int(match.group(1)) if match else None


def _body_prev(body: bytes) -> bytes | None:
    match = _PREV.search(body)
    return binascii.unhexlify(match.group(1)) if match else None


def _scan_for(seq: int, chunk: Chunk, i: int, rest: Iterator[Chunk]) -> bool:
    """Whether an entry whose body says ``seq`` appears from ``chunk[i]`` on."""
    if any(_body_seq(b) == seq for b in chunk.bodies[i:]):
        return True
    return any(_body_seq(b) == seq for later in rest for b in later.bodies)


def _following(chunk: Chunk, i: int, rest: Iterator[Chunk]) -> bytes | None:
    if i + 1 < len(chunk.bodies):
        return chunk.bodies[i + 1]
    for later in rest:
        if later.bodies:
            return later.bodies[0]
    return None


def deep_check(body: bytes) -> str | None:
    """Why ``body`` is not a canonical v1 entry, or None: the slow per-entry check."""
    try:
        entry = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "entry-unparseable"
    if not isinstance(entry, dict):
        return "entry-unparseable"
    try:
        canonical = encode(entry)
    except Exception:
        return "entry-unparseable"
    if canonical != body:
        return "entry-not-canonical"
    if entry.get("v") != 1 or not isinstance(entry.get("decision"), dict):
        return "entry-shape"
    return None


def verify_log(
    chunks: Iterable[Chunk],
    *,
    checkpoints: Sequence[SignedCheckpoint] = (),
    head: Head | None = None,
    deep: bool = False,
    nodes: Iterable[tuple[int, int, str]] | None = None,
    parallel: bool = True,
) -> Verification:
    """Check every entry in order against each other and against the signed checkpoints.

    ``checkpoints`` must already be signature-checked (see :func:`open_checkpoints`). ``nodes``
    are a store's perfect-subtree hashes (level >= 1) ordered by level and index: proofs are
    built from them, so each must be the hash the entries give. ``parallel=False`` keeps all
    the work in this process (the result is the same).
    """
    by_size: dict[int, SignedCheckpoint] = {}
    for signed in checkpoints:
        seen = by_size.setdefault(signed.checkpoint.size, signed)
        if seen.checkpoint.root != signed.checkpoint.root:
            return Verification(
                False, 0, merkle.EMPTY_ROOT.hex(), Fault.FORK, signed.checkpoint.size,
                "conflicting-checkpoints",
                f"two signed checkpoints of size {signed.checkpoint.size} disagree "
                f"({seen.source}, {signed.source}): the log showed two histories")
    pending = sorted(by_size.values(), key=lambda s: s.checkpoint.size)
    latest = pending[-1].checkpoint.size if pending else None
    walk = _Walk([s for s in pending if s.checkpoint.size > 0], deep)
    if nodes is not None:
        walk.leaves = []
    stream = iter(chunks)
    try:
        for chunk in stream:
            if not chunk.bodies:
                continue
            if deep and parallel and len(chunk.bodies) >= PARALLEL_MIN_ENTRIES:
                _run_parallel(walk, itertools.chain([chunk], stream), head)
                break
            walk.chunk(chunk, stream, head)
        _finish(walk, head)
        if nodes is not None and walk.leaves is not None:
            _check_nodes(walk.leaves, nodes)
    except _Found as found:
        return Verification(False, walk.frontier.size, walk.frontier.root().hex(), found.fault,
                            found.seq, found.reason, found.detail, walk.checked, latest)
    return Verification(True, walk.frontier.size, walk.frontier.root().hex(),
                        checkpoints=walk.checked, latest_checkpoint=latest,
                        unproven=walk.frontier.size - walk.good_size)


def require_signed_tail(result: Verification) -> Verification:
    """``result``, or the fault ``unsigned-tail`` if entries follow its last signed checkpoint.

    A stored log always has such a tail (checkpoints are signed every N entries or T seconds)
    and its head row counts it. An export has no head: entries after its last checkpoint are
    bound by nothing the key signed, so an export whose tail was cut off would look whole. An
    export is therefore held to end at a signed checkpoint.
    """
    if not result.valid or result.unproven == 0:
        return result
    first = result.size - result.unproven + 1
    return replace(
        result, valid=False, fault=Fault.UNSIGNED_TAIL, first_bad_seq=first,
        reason="unsigned-tail",
        detail=f"entries {first}..{result.size} ({result.unproven}) are after the last signed "
               f"checkpoint ({result.latest_checkpoint or 0} entries): no signature covers "
               "them, so a cut among them could not be seen")


def verify_with_notes(
    chunks: Iterable[Chunk],
    notes: Sequence[tuple[str, str]],
    verifier: NoteVerifier,
    *,
    head: Head | None = None,
    deep: bool = False,
    nodes: Iterable[tuple[int, int, str]] | None = None,
) -> Verification:
    """:func:`verify_log` after checking every (note, source) against ``verifier``'s key; the
    first note that does not verify is the fault ``bad-checkpoint``."""
    try:
        signed = open_checkpoints(notes, verifier)
    except CheckpointError as exc:
        return Verification(False, 0, "", Fault.BAD_CHECKPOINT, None, "checkpoint-signature",
                            str(exc))
    return verify_log(chunks, checkpoints=signed, head=head, deep=deep, nodes=nodes)


def _finish(walk: _Walk, head: Head | None) -> None:
    size = walk.frontier.size
    if walk.pending:
        ahead = walk.pending[-1]
        raise _Found(Fault.ROLLBACK, size + 1, "log-shorter-than-checkpoint",
                     f"a signed checkpoint ({ahead.source}) covers {ahead.checkpoint.size} "
                     f"entries; the log has {size}")
    if head is None:
        return
    if head.size > size:
        raise _Found(Fault.ROLLBACK, size + 1, "log-shorter-than-head",
                     f"the head row counts {head.size} entries; the log has {size}")
    if head.size < size:
        raise _Found(Fault.BAD_ENTRY, head.size + 1, "entry-beyond-head",
                     f"entries after {head.size} were written without moving the head")
    if head.head_hash != (walk.last.hex() if size else GENESIS_HASH):
        raise _Found(Fault.BAD_ENTRY, size, "head-mismatch",
                     f"the head row's hash is not entry {size}'s leaf hash")
    if head.frontier is not None and head.frontier != walk.frontier.to_bytes():
        raise _Found(Fault.FORK, size, "head-frontier-mismatch",
                     "the head row's tree frontier is not this log's: appends would grow "
                     "another tree")


def _check_nodes(leaves: list[bytes], stored: Iterable[tuple[int, int, str]]) -> None:
    """Every stored perfect node is the hash of its two children, level by level, and every
    complete one is stored."""
    below = leaves
    level = 0
    rows = iter(stored)
    row = next(rows, None)
    while len(below) > 1:
        level += 1
        above = list(map(_digest, map(_sha256, map(
            bytes.__add__, map(_NODE, below[0::2]), below[1::2]))))
        for idx, expected in enumerate(above):
            if row is None or (row[0], row[1]) != (level, idx) or row[2] != expected.hex():
                first = (idx << level) + 1
                raise _Found(Fault.FORK, first, "tree-node-mismatch",
                             f"the stored tree node ({level}, {idx}) over entries {first}.."
                             f"{(idx + 1) << level} is missing or not their hash: proofs "
                             "built from it would not hold")
            row = next(rows, None)
        below = above
    if row is not None:
        raise _Found(Fault.FORK, (row[1] << row[0]) + 1, "tree-node-mismatch",
                     f"the stored tree has a node ({row[0]}, {row[1]}) the entries do not make")


# --- exports --------------------------------------------------------------------------------

EXPORT_FORMAT = "broker-audit-export/1"


def export_chunks(lines: Iterable[bytes], size: int = 65536) -> Iterator[Chunk]:
    """Entry chunks from an export's lines (header and checkpoint lines are skipped)."""
    bodies: list[bytes] = []
    for raw in lines:
        body = raw.rstrip(b"\n")
        if body.startswith((b'{"checkpoint":', b'{"format":')) or not body:
            continue
        bodies.append(body)
        if len(bodies) == size:
            yield Chunk(bodies)
            bodies = []
    if bodies:
        yield Chunk(bodies)


def export_notes(lines: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """The (note, source) of every checkpoint line of an export."""
    for number, raw in enumerate(lines, start=1):
        if raw.startswith(b'{"checkpoint":'):
            try:
                note = json.loads(raw)["checkpoint"]
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"export line {number}: unreadable checkpoint") from exc
            if not isinstance(note, str):
                raise CheckpointError(f"export line {number}: unreadable checkpoint")
            yield note, f"export line {number}"


def export_header(origin: str, vkey: str) -> bytes:
    """The first line of an export: format, origin and the key that signs its checkpoints."""
    return json.dumps({"format": EXPORT_FORMAT, "origin": origin, "key": vkey},
                      sort_keys=True).encode()


def export_checkpoint_line(note: str) -> bytes:
    """One checkpoint as an export line."""
    return json.dumps({"checkpoint": note}, ensure_ascii=False).encode()
