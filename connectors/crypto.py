"""Envelope encryption at rest: AES-256-GCM under per-object data keys, wrapped by a master key.

Every sealed object (a dataset version, an entity index, the release-cache key) has its own
random 256-bit data key. The object is one AES-GCM message::

    MAGIC (6 bytes) | format version (1) | algorithm (1) | nonce (12) | ciphertext | tag (16)

whose associated data binds the eight header bytes and the object's *context* (for a stored
file, its location under the storage root), so a flipped bit anywhere, a truncated file, or two
files swapped (each under its own valid key) all fail authentication. The data key is wrapped,
again with AES-256-GCM (associated data: purpose and context), under the master key and kept in
a small JSON *key file* beside the object. Rotating the master key re-wraps the key files and
never touches a sealed object (NIST SP 800-57 part 1, 5.3.4: key-wrapping keys are replaced
without re-encrypting the data they protect, which is what the envelope buys).

The master key is 32 random bytes in a file outside the database. While a rotation runs, its
successor sits beside it as ``<name>.next``; readers accept a key file wrapped under either, so a
crash at any point leaves every object readable and a rerun finishes the rotation. Writers of
key files hold a shared ``flock`` on ``<name>.lock`` and a rotation an exclusive one, so no key
file can be wrapped under a key the rotation is about to retire.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.domain.errors import DatasetUnreadable

MAGIC = b"BRKENC"
FORMAT_VERSION = 1
ALG_A256GCM = 1
HEADER = MAGIC + bytes((FORMAT_VERSION, ALG_A256GCM))
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: One AES-GCM call (OpenSSL through ``cryptography``) takes at most 2**31 - 1 bytes.
MAX_PLAINTEXT = 2**31 - 1 - TAG_BYTES

_KEY_FILE_FORMAT = "broker-wrapped-key/1"
_WRAP_ALG = "A256GCM"
_OBJECT_PURPOSE = b"broker sealed object\x00"
_WRAP_PURPOSE = b"broker data key\x00"
_ID_PURPOSE = b"broker master key id\x00"


class SealError(Exception):
    """A sealed object or key file cannot be opened: tampered, truncated, swapped, missing, or
    wrapped under a master key this keyring does not hold. Messages name no content."""


class TooLarge(ValueError):
    """An object is over the one-message AES-GCM limit of :data:`MAX_PLAINTEXT` bytes."""


@dataclass(frozen=True, slots=True)
class MasterKey:
    """A key-wrapping key; ``id`` names it in key files without revealing it."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise ValueError(f"a master key is exactly {KEY_BYTES} bytes")

    @property
    def id(self) -> str:
        """A short, domain-separated SHA-256 of the key (16 hex digits)."""
        return hashlib.sha256(_ID_PURPOSE + self.secret).hexdigest()[:16]


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def seal(data_key: bytes, plaintext: bytes | memoryview, context: str) -> bytes:
    """``plaintext`` as one sealed object bound to ``context`` (header, random nonce, AES-GCM)."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise TooLarge(f"objects over {MAX_PLAINTEXT} bytes cannot be sealed in one message")
    nonce = secrets.token_bytes(NONCE_BYTES)
    return HEADER + nonce + AESGCM(data_key).encrypt(nonce, plaintext, _object_aad(context))


def open_sealed(data_key: bytes, blob: bytes | memoryview, context: str) -> bytes:
    """The plaintext of a sealed object; :class:`SealError` unless it authenticates."""
    view = memoryview(blob)
    if len(view) < len(HEADER) + NONCE_BYTES + TAG_BYTES or bytes(view[: len(HEADER)]) != HEADER:
        raise SealError("not a sealed object of a known format")
    nonce = view[len(HEADER): len(HEADER) + NONCE_BYTES]
    try:
        return AESGCM(data_key).decrypt(nonce, view[len(HEADER) + NONCE_BYTES:],
                                        _object_aad(context))
    except InvalidTag:
        raise SealError("the sealed object failed authentication") from None


def _object_aad(context: str) -> bytes:
    return _OBJECT_PURPOSE + HEADER + context.encode()


def wrap_key(master: MasterKey, data_key: bytes, context: str) -> bytes:
    """A key file's content: ``data_key`` wrapped under ``master`` for ``context``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    wrapped = AESGCM(master.secret).encrypt(nonce, data_key, _wrap_aad(context))
    doc = {"format": _KEY_FILE_FORMAT, "alg": _WRAP_ALG, "kek": master.id,
           "nonce": _b64(nonce), "wrapped": _b64(wrapped)}
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def wrapping_key_id(key_file: bytes) -> str:
    """The id of the master key a key file says it is wrapped under."""
    return _parse_key_file(key_file)[0]


def unwrap_key(master: MasterKey, key_file: bytes, context: str) -> bytes:
    """The data key in a key file wrapped under ``master``; :class:`SealError` otherwise."""
    kek, nonce, wrapped = _parse_key_file(key_file)
    if kek != master.id:
        raise SealError("the key file is wrapped under another master key")
    try:
        data_key = AESGCM(master.secret).decrypt(nonce, wrapped, _wrap_aad(context))
    except InvalidTag:
        raise SealError("the key file failed authentication") from None
    if len(data_key) != KEY_BYTES:
        raise SealError("the key file holds no 256-bit key")
    return data_key


def _wrap_aad(context: str) -> bytes:
    return _WRAP_PURPOSE + _WRAP_ALG.encode() + b"\x00" + context.encode()


def _parse_key_file(content: bytes) -> tuple[str, bytes, bytes]:
    try:
        doc = json.loads(content)
        if (not isinstance(doc, dict) or doc.get("format") != _KEY_FILE_FORMAT
                or doc.get("alg") != _WRAP_ALG or not isinstance(doc.get("kek"), str)):
            raise SealError("not a key file of a known format")
        nonce = base64.b64decode(doc["nonce"], validate=True)
        wrapped = base64.b64decode(doc["wrapped"], validate=True)
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise SealError("not a key file of a known format") from None
    if len(nonce) != NONCE_BYTES:
        raise SealError("not a key file of a known format")
    return doc["kek"], nonce, wrapped


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _durable_temp(path: Path, data: bytes, mode: int) -> Path:
    """``data`` in a new temporary file beside ``path``, fsynced (the caller moves it in)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # no partial file left behind (disk full)
        raise
    return tmp


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` all at once: temporary file, fsync, rename, fsync dir."""
    tmp = _durable_temp(path, data, mode)
    try:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def create_exclusive(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` unless a file is there already; whether it was made.

    ``data`` is written in full to a temporary file and then linked into place, which fails
    if another process got there first: a reader never sees a partial file, and of several
    processes starting together (workers, pods on one volume) the first one's file stands,
    never replaced by a later one's (``write_atomic`` would replace it, leaving the first
    process with a key that is no longer on disk).
    """
    tmp = _durable_temp(path, data, mode)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Keyring:
    """The master key held in the file ``path``, and its successor ``path.next`` while a
    rotation is under way.

    Key files are wrapped under the current key; one is unwrapped under whichever key it names,
    read again from disk when the name is unknown, so a process that started before a rotation
    (run by ``broker keys rotate`` in another process) keeps working after it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys: dict[str, MasterKey] = {}

    @property
    def next_path(self) -> Path:
        """Where a rotation keeps the new key until every key file is wrapped under it."""
        return self.path.with_name(self.path.name + ".next")

    @property
    def lock_path(self) -> Path:
        """The file writers (shared) and rotations (exclusive) lock."""
        return self.path.with_name(self.path.name + ".lock")

    def current(self) -> MasterKey:
        """The key new key files are wrapped under, as the file says now."""
        return _read_master(self.path)

    def find(self, key_id: str) -> MasterKey:
        """The key named ``key_id``: current or successor; :class:`SealError` if neither."""
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                self._keys = self._load()
                key = self._keys.get(key_id)
        if key is None:
            raise SealError("the key file is wrapped under a master key this keyring lacks")
        return key

    def _load(self) -> dict[str, MasterKey]:
        # The successor first: a rotation that finishes in between renames it over the
        # current key, which is then read as the new key, and nothing is missed.
        keys = []
        if self.next_path.exists():
            with contextlib.suppress(SealError):  # gone meanwhile: it is the current key now
                keys.append(_read_master(self.next_path))
        keys.append(_read_master(self.path))
        return {k.id: k for k in keys}

    def unwrap(self, key_file: bytes, context: str) -> bytes:
        """The data key of a key file, under the master key it names."""
        return unwrap_key(self.find(wrapping_key_id(key_file)), key_file, context)

    @contextlib.contextmanager
    def writing(self) -> Iterator[MasterKey]:
        """Hold off rotations while a key file is wrapped under the current key and written.

        Where the key's directory is read-only (a mounted secret) no lock file can exist;
        no rotation can run there either, so none is needed.
        """
        try:
            fd: int | None = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)
            yield self.current()
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def rotating(self) -> Iterator[None]:
        """Exclude every writer (and any other rotation) for the duration."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def write_key_file(self, path: Path, data_key: bytes, context: str) -> None:
        """Wrap ``data_key`` under the current master key into the key file ``path``."""
        with self.writing() as master:
            write_atomic(path, wrap_key(master, data_key, context))

    def read_key_file(self, path: Path, context: str) -> bytes:
        """The data key in the key file ``path``; :class:`SealError` if missing or bad."""
        try:
            content = path.read_bytes()
        except OSError:
            raise SealError("the key file is missing or unreadable") from None
        return self.unwrap(content, context)


def _read_master(path: Path) -> MasterKey:
    try:
        return MasterKey(path.read_bytes())
    except FileNotFoundError:
        raise SealError("the master key file is missing") from None
    except ValueError:
        raise SealError(f"{path} must hold exactly {KEY_BYTES} bytes") from None


def create_master_key(path: Path) -> None:
    """Write a new random master key to ``path`` (mode 0600) unless a file is there.

    No reader ever sees a partial key, and two processes starting together cannot each keep
    a different one (``create_exclusive``).
    """
    if path.exists():
        return
    create_exclusive(path, secrets.token_bytes(KEY_BYTES))


#: A key file to re-wrap and the context its data key is bound to.
KeyFileRef = tuple[Path, str]


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation did: the retired and the new key's ids, and the key files it re-wrapped
    now, found already wrapped under the new key (an interrupted run), and in all."""

    old_id: str
    new_id: str
    rewrapped: int
    already: int

    @property
    def total(self) -> int:
        """Key files under the new key at the end."""
        return self.rewrapped + self.already


def rotate(keyring: Keyring, key_files: Callable[[], Iterable[KeyFileRef]]) -> Rotation:
    """Replace the master key: wrap every key file under a new key, then retire the old one.

    Runs under the exclusive lock. The new key is written to ``next_path`` first (or taken
    from there when an earlier run was interrupted); every key file is opened before any is
    rewritten, so a bad one stops the rotation with nothing changed; then each is replaced
    atomically and finally the new key replaces the old. Sealed objects are never touched.
    """
    with keyring.rotating():
        old = keyring.current()
        fresh = not keyring.next_path.exists()
        if fresh:
            write_atomic(keyring.next_path, secrets.token_bytes(KEY_BYTES))
        new = _read_master(keyring.next_path)
        pending: list[tuple[Path, str, bytes]] = []
        already, bad = 0, []
        for path, context in key_files():
            try:
                content = path.read_bytes()
            except FileNotFoundError:  # removed meanwhile, with the object it opened
                continue
            except OSError:
                bad.append(path)
                continue
            try:
                if wrapping_key_id(content) == new.id:
                    unwrap_key(new, content, context)
                    already += 1
                else:
                    pending.append((path, context, unwrap_key(old, content, context)))
            except SealError:
                bad.append(path)
        if bad:
            if fresh:
                keyring.next_path.unlink(missing_ok=True)
            raise SealError(f"{len(bad)} key file(s) cannot be opened, nothing was rotated: "
                            + ", ".join(str(p) for p in bad[:10]))
        for path, context, data_key in pending:
            write_atomic(path, wrap_key(new, data_key, context))
        os.replace(keyring.next_path, keyring.path)
        fsync_dir(keyring.path.parent)
    return Rotation(old.id, new.id, len(pending), already)


class TextSealer:
    """Seals short texts (the release cache) under one data key kept in a key file.

    The key file is made on first use; ``context`` binds each sealed text to where it is
    stored, so a row copied over another does not open. A text that does not open raises
    :class:`DatasetUnreadable`: it was tampered with, and the caller must fail closed.
    """

    PURPOSE = "release-cache"

    def __init__(self, keyring: Keyring, key_file: Path) -> None:
        self.keyring = keyring
        self.key_file = key_file
        with keyring.writing() as master:  # no rotation between the check and the write
            if not key_file.exists():  # another process may make it first: its key stands
                create_exclusive(key_file, wrap_key(master, new_data_key(), self.PURPOSE))
        self._key = keyring.read_key_file(key_file, self.PURPOSE)

    def seal(self, plaintext: str, *, context: str) -> str:
        """``plaintext`` sealed for ``context``, as ASCII text."""
        return base64.b64encode(seal(self._key, plaintext.encode(), context)).decode("ascii")

    def open(self, sealed: str, *, context: str) -> str:
        """The text sealed for ``context``; :class:`DatasetUnreadable` unless it authenticates."""
        try:
            blob = base64.b64decode(sealed, validate=True)
            return open_sealed(self._key, blob, context).decode()
        except (ValueError, binascii.Error, SealError):
            raise DatasetUnreadable(
                "A stored answer failed its integrity check; nothing was released.") from None
