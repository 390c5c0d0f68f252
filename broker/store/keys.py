"""Key material kept as files outside the database: the dev JWT secret, the checkpoint key,
the master key of encryption at rest."""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import NoteSigner
from broker.settings import Settings
from connectors.crypto import Keyring, SealError, TextSealer, create_exclusive, create_master_key
from connectors.storage import KEY_FILE


def _load_or_create(path: Path, make: bytes) -> bytes:
    """The file's bytes, creating it with ``make`` first if it does not exist (whole, mode
    0600; of several processes starting together the first one's stands)."""
    if not path.exists():
        create_exclusive(path, make)
    return path.read_bytes()


def jwt_secret(settings: Settings) -> str:
    """The HS256 secret: ``BROKER_JWT_SECRET``, or one generated into the data directory."""
    if settings.jwt_secret is not None:
        value = settings.jwt_secret.get_secret_value()
        if len(value) < 32:
            raise ValueError("BROKER_JWT_SECRET must be at least 32 characters")
        return value
    path = settings.keys_dir / "jwt-secret"
    value = _load_or_create(path, secrets.token_urlsafe(48).encode()).decode().strip()
    if len(value) < 32:  # an empty or cut file must not become a guessable signing key
        raise ValueError(f"{path} must hold at least 32 characters")
    return value


def console_secret(settings: Settings) -> bytes:
    """The key that signs the web console's session cookies (32 random bytes), generated on
    first run; replacing it logs everyone out of the console."""
    path = settings.keys_dir / "console-secret"
    value = _load_or_create(path, secrets.token_bytes(32))
    if len(value) != 32:
        raise ValueError(f"{path} must hold exactly 32 bytes")
    return value


def checkpoint_key(settings: Settings) -> Ed25519PrivateKey:
    """The Ed25519 key that signs audit checkpoints, generated on first run."""
    path = settings.checkpoint_key_path
    pub_path = path.with_suffix(".pub")
    if not path.exists() and pub_path.exists():  # e.g. restored without the key copy
        raise ValueError(
            f"{pub_path} is there without its private key {path}: a new key would sign "
            "checkpoints its public key does not verify. Put the key in place (broker restore "
            "--keys), or move the .pub aside to start a new checkpoint key")
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key = serialization.load_pem_private_key(_load_or_create(path, pem), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not pub_path.exists():
        create_exclusive(pub_path, public, mode=0o644)
    return key


def checkpoint_signer(settings: Settings) -> NoteSigner:
    """Signs checkpoints under the log's origin with :func:`checkpoint_key`."""
    return NoteSigner(settings.audit_origin, checkpoint_key(settings))


def pseudonym_secret(settings: Settings) -> bytes:
    """The secret behind pseudonymized group keys (32 random bytes), generated on first run.

    Losing it changes every pseudonym; leaking it lets anyone test a guessed value against a
    released pseudonym, so it lives with the other keys, outside the database.
    """
    path = settings.keys_dir / "pseudonym-secret"
    value = _load_or_create(path, secrets.token_bytes(32))
    if len(value) != 32:
        raise ValueError(f"{path} must hold exactly 32 bytes")
    return value


def master_keyring(settings: Settings) -> Keyring:
    """The master key of encryption at rest (32 random bytes, mode 0600), made on first run.

    Losing it loses every stored dataset; it lives outside the database for the same reason
    the checkpoint key does, and ``broker keys rotate`` replaces it.
    """
    if not settings.master_key_path.exists() and (
            release_cache_key_path(settings).exists()
            or any(settings.datasets_dir.rglob(f"*{KEY_FILE}"))):
        # data sealed under a key that is not here (a restore without --keys): a new key
        # would open none of it, and every secret made after it would not be the data's
        raise SealError(
            f"there is no master key at {settings.master_key_path}, and this data directory "
            "holds data keys wrapped under one: put that key in place (broker restore --keys) "
            "before starting; no new key was made")
    create_master_key(settings.master_key_path)
    keyring = Keyring(settings.master_key_path)
    keyring.current()  # a file of the wrong size fails here, at start-up
    return keyring


def release_cache_key_path(settings: Settings) -> Path:
    """The key file of the release cache's data key (wrapped under the master key)."""
    return settings.keys_dir / "release-cache.key"


def release_sealer(settings: Settings, keyring: Keyring) -> TextSealer:
    """Seals the release cache's answers in the database; its key is made on first run."""
    return TextSealer(keyring, release_cache_key_path(settings))
