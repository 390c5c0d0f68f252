"""Organisation keys the broker holds in embedded mode, as files outside the database.

In production every organisation keeps its own Ed25519 key and signs offers and acceptances
itself (``broker contracts sign``); the broker only stores public keys. For the one-command
demo the broker can generate a key for an organisation registered without one and sign on its
behalf. Those private keys live under ``<data dir>/keys/orgs/``, mode 0600, one PEM per
organisation, and never in the database.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.domain.names import ORG_ID
from contracts.terms import encode_public_key


class FileOrgKeyring:
    """One Ed25519 private key per organisation, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, org_id: str) -> Path:
        if not ORG_ID.fullmatch(org_id):
            raise ValueError("not an organisation id")
        return self.directory / f"{org_id}.ed25519.pem"

    def create(self, org_id: str) -> str:
        """Generate the organisation's key (kept if one exists); its public key, base64."""
        path = self._path(org_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
        return encode_public_key(self._load(path).public_key())

    def sign(self, org_id: str, message: bytes) -> str | None:
        """The organisation's signature over ``message``, or None if the broker has no key."""
        path = self._path(org_id)
        if not path.exists():
            return None
        return base64.b64encode(self._load(path).sign(message)).decode()

    @staticmethod
    def _load(path: Path) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return key
