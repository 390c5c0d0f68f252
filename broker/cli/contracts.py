"""``broker contracts``: make an organisation key, sign and check contract terms offline.

An organisation that keeps its own key never gives it to the broker: it registers the public
key (``POST /v1/orgs``, ``public_key``), fetches the terms (``GET /v1/contracts/{id}/terms``),
signs them here, and sends the signature (``POST /v1/contracts/{id}/sign`` for the provider's
offer, ``POST /v1/contracts/{id}/accept`` for the consumer's acceptance).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from contracts.terms import BadKey, ContractTerms, encode_public_key, sign, verify

contracts_app = typer.Typer(help="Organisation keys and contract signatures.",
                            no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(1)


def _terms(path: str) -> ContractTerms:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        return ContractTerms.model_validate_json(text)
    except ValidationError as exc:
        raise _fail(f"Not a contract terms document: {exc.error_count()} problem(s):\n"
                    + "\n".join(f"  {'.'.join(map(str, e['loc']))}: {e['msg']}"
                                for e in exc.errors())) from exc


@contracts_app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Where to write the private key (PEM, mode 0600)")],
) -> None:
    """Make an Ed25519 organisation key; print the public key to register with the broker."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise _fail(f"{out} exists; not overwriting a key.") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    typer.echo(encode_public_key(key.public_key()))


@contracts_app.command("sign")
def sign_terms(
    terms: Annotated[str, typer.Argument(help="The terms JSON (GET /v1/contracts/{id}/terms), "
                                              "or - for stdin")],
    key: Annotated[Path, typer.Option(help="The organisation's Ed25519 private key (PEM)")],
) -> None:
    """Sign the RFC 8785 canonical bytes of the terms; print the base64 signature."""
    document = _terms(terms)
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise _fail(f"Cannot read an unencrypted PEM private key from {key}.") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise _fail(f"{key} is not an Ed25519 key.")
    typer.echo(sign(private, document))


@contracts_app.command("verify")
def verify_terms(
    terms: Annotated[str, typer.Argument(help="The terms JSON, or - for stdin")],
    signature: Annotated[str, typer.Option(help="The base64 signature")],
    pubkey: Annotated[str, typer.Option(help="The signer's public key: base64, or a PEM file")],
) -> None:
    """Check a signature over the canonical terms; exit 0 if it verifies, 1 if not."""
    document = _terms(terms)
    key_text = Path(pubkey).read_text() if Path(pubkey).is_file() else pubkey
    try:
        ok = verify(key_text, document.canonical(), signature)
    except BadKey as exc:
        raise _fail(str(exc)) from exc
    if not ok:
        raise _fail("The signature does NOT verify over these terms under this key.")
    typer.echo("valid")
