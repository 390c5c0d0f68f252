"""Signed checkpoints: a C2SP tlog-checkpoint body signed as a C2SP signed note with Ed25519.

A checkpoint commits the log operator to the tree of its first ``size`` entries::

    <origin>
    <size>
    <base64 root hash>

followed by a blank line and one signature line per signer::

    — <key name> base64(4-byte key ID || 64-byte Ed25519 signature over the body)

The key ID is SHA-256(key name || 0x0A || 0x01 || public key)[:4]. A verifier is configured
with a *verifier key* string ``<name>+<key ID hex>+base64(0x01 || public key)``, the form
Go's ``golang.org/x/mod/sumdb/note`` and the transparency-dev tools read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "
MAX_NOTE_BYTES = 16 * 1024
_NAME = re.compile(r"^[^\s+]+$")
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,18})$")


class CheckpointError(ValueError):
    """A note or checkpoint that is malformed or not signed by the expected key."""


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public).digest()[:4]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The tree of the first ``size`` entries of the log ``origin`` has root ``root``."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        """The checkpoint text that is signed."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Read a checkpoint body (extension lines after the root are allowed and ignored)."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise CheckpointError("a checkpoint body is origin, size and root, each on a line")
        origin, size, root = lines[0], lines[1], lines[2]
        if not origin or not _SIZE.match(size):
            raise CheckpointError("the checkpoint's origin or size is malformed")
        try:
            digest = base64.b64decode(root, validate=True)
        except binascii.Error as exc:
            raise CheckpointError("the checkpoint's root is not base64") from exc
        if len(digest) != 32:
            raise CheckpointError("the checkpoint's root is not a SHA-256 hash")
        return cls(origin, int(size), digest)


class NoteVerifier:
    """Checks signed notes against one Ed25519 key known by name."""

    def __init__(self, name: str, public: Ed25519PublicKey) -> None:
        if not _NAME.match(name):
            raise CheckpointError("a key name has no spaces or plus signs")
        self.name = name
        self.public = public
        self.key_id = _key_id(name, _raw(public))

    @property
    def vkey(self) -> str:
        """The verifier key string: ``name+keyid+base64(0x01 || key)``."""
        encoded = base64.b64encode(bytes([ED25519]) + _raw(self.public)).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    @property
    def pem(self) -> str:
        """The public key as PEM (SubjectPublicKeyInfo)."""
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse a verifier key string; its key ID must match its name and key."""
        name, _, rest = vkey.strip().partition("+")
        key_id, _, encoded = rest.partition("+")  # base64 may itself hold "+"
        if not name or len(key_id) != 8 or not encoded:
            raise CheckpointError("a verifier key is name+keyid+key")
        try:
            raw = base64.b64decode(encoded, validate=True)
            wanted = bytes.fromhex(key_id)
        except (binascii.Error, ValueError) as exc:
            raise CheckpointError("the verifier key is not hex and base64") from exc
        if len(raw) != 33 or raw[0] != ED25519:
            raise CheckpointError("the verifier key is not an Ed25519 key")
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.key_id != wanted:
            raise CheckpointError("the verifier key's ID does not match its name and key")
        return verifier

    @classmethod
    def from_text(cls, text: str, name: str | None = None) -> NoteVerifier:
        """A verifier key string, or a PEM public key with the key name given separately."""
        text = text.strip()
        if not text.startswith("-----BEGIN"):
            return cls.from_vkey(text)
        if name is None:
            raise CheckpointError("a PEM public key needs the key name (the log origin)")
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise CheckpointError("the PEM text is not a public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise CheckpointError("the public key is not Ed25519")
        return cls(name, key)

    def open(self, note: str) -> str:
        """The note's text if this key signed it; CheckpointError otherwise.

        Signatures by other keys are ignored; a signature that claims this key (name and ID)
        but does not verify rejects the whole note.
        """
        if len(note.encode()) > MAX_NOTE_BYTES:
            raise CheckpointError("the note is too large")
        if any(ord(c) < 0x20 and c != "\n" for c in note):
            raise CheckpointError("a note holds no control characters but newline")
        split = note.rfind("\n\n")
        if split < 0 or not note.endswith("\n"):
            raise CheckpointError("a signed note is text, a blank line and signature lines")
        text, signatures = note[: split + 1], note[split + 2 : -1].split("\n")
        verified = False
        for line in signatures:
            if not line.startswith(SIGNATURE_PREFIX):
                raise CheckpointError("a signature line starts with an em dash and a space")
            name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
            try:
                blob = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise CheckpointError("a signature is not base64") from exc
            if len(blob) < 5:
                raise CheckpointError("a signature is too short")
            if name != self.name or blob[:4] != self.key_id:
                continue
            try:
                self.public.verify(blob[4:], text.encode())
            except InvalidSignature as exc:
                raise CheckpointError("the note's signature does not verify") from exc
            verified = True
        if not verified:
            raise CheckpointError(f"the note is not signed by {self.name}")
        return text

    def checkpoint(self, note: str, origin: str | None = None) -> Checkpoint:
        """The checkpoint in a signed note, after checking the signature and the origin."""
        checkpoint = Checkpoint.parse(self.open(note))
        if checkpoint.origin != (origin or self.name):
            raise CheckpointError("the checkpoint is for another log")
        return checkpoint


class NoteSigner:
    """Signs notes with one Ed25519 key under a key name (by convention the log origin)."""

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        self.verifier = NoteVerifier(name, private.public_key())
        self.name = name
        self._private = private

    def sign(self, text: str) -> str:
        """``text`` as a signed note with this key's signature line."""
        if not text.endswith("\n"):
            raise CheckpointError("note text ends with a newline")
        blob = self.verifier.key_id + self._private.sign(text.encode())
        return f"{text}\n{SIGNATURE_PREFIX}{self.name} {base64.b64encode(blob).decode()}\n"

    def checkpoint(self, checkpoint: Checkpoint) -> str:
        """The signed note of a checkpoint."""
        return self.sign(checkpoint.body())
