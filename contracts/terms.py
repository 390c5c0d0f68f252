"""The signed terms of a usage contract: a pydantic model, its canonical bytes and signatures.

The terms document is what both parties sign: the provider signs it when it offers, the
consumer when it accepts. Both sign the same bytes, the RFC 8785 canonical JSON of the
document, with the Ed25519 key their organisation registered. The broker keeps the terms as
columns and rebuilds the document from them on every use (``Contract.document``), so a term
changed in the database no longer matches either signature, and the contract is not used.

The JSON Schema of :class:`ContractTerms` is checked into ``contracts/schema/`` (a test keeps
the two equal) for parties that build or check terms outside the broker.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)

from broker.domain.names import FIELD_NAME, ORG_ID

#: The ``type`` every terms document carries: names the format and its version.
TERMS_TYPE: Literal["broker-usage-contract/v1"] = "broker-usage-contract/v1"

OrgId = Annotated[str, StringConstraints(pattern=ORG_ID.pattern)]


def _field_name(value: str) -> str:
    if not FIELD_NAME.fullmatch(value):
        raise ValueError("a field name starts with a letter or '_' and has at most 63 letters, "
                         "digits or '_'")
    return value


# Checked in Python (Unicode letters, as dataset field names allow): an ECMA-262 pattern's \w
# would mean ASCII only to a JSON Schema validator.
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=63),
                      AfterValidator(_field_name)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Uuid = Annotated[str, StringConstraints(
    pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
Form = Literal["aggregate", "clear", "generalize", "pseudonymize"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetTerms(_Strict):
    """The data the contract covers: a dataset, at a pinned version or its latest one."""

    id: Uuid
    version: int | None = Field(
        default=None, ge=1, strict=True,
        description="The pinned version; absent or null follows the latest version")


class DominanceTerms(_Strict):
    """(n, k) dominance and the p% rule applied to every released cell."""

    n: int = Field(ge=1, le=10, strict=True)
    k: float = Field(gt=0, le=100, strict=True)
    p: float = Field(default=0.0, ge=0, le=100, strict=True)


class ContractTerms(_Strict):
    """Everything the parties agree to; the document both of them sign."""

    type: Literal["broker-usage-contract/v1"] = TERMS_TYPE
    id: Uuid
    provider: OrgId = Field(description="The organisation that owns the data and offers")
    consumer: OrgId = Field(description="The organisation the terms are offered to")
    dataset: DatasetTerms
    slice: Uuid | None = Field(default=None, description="A consented slice of the dataset "
                               "the contract is limited to")
    purposes: Annotated[list[Slug], Field(min_length=1, max_length=20)] = Field(
        description="Purposes from the broker's purpose catalogue")
    fields: Annotated[dict[FieldName, Form], Field(min_length=1, max_length=200)] = Field(
        description="Field name -> the form in which it may flow")
    k_min: int = Field(ge=2, le=10_000, strict=True,
                       description="Minimum distinct enterprises behind a released cell")
    dominance: DominanceTerms
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    max_queries_per_day: int = Field(ge=1, le=1_000_000, strict=True)
    result_retention_days: int = Field(
        ge=0, le=3650, strict=True,
        description="Days the consumer may keep a released result before deleting it")
    linkable: bool = Field(
        default=False, strict=True,
        description="Whether the consumer may join this dataset with other providers' data by "
                    "enterprise inside the broker; absent means false")
    offered_at: AwareDatetime

    @model_serializer(mode="wrap")
    def _unlinkable_unsaid(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A term at its default is left out, so documents signed before the term existed
        # keep their bytes (and their signatures verify); a granted link is always said.
        document: dict[str, Any] = handler(self)
        if not self.linkable:
            document.pop("linkable", None)
        return document

    def canonical(self) -> bytes:
        """The bytes both parties sign: RFC 8785 canonical JSON of the document."""
        return canonical_bytes(self.model_dump(mode="json"))


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """RFC 8785 canonical JSON."""
    return bytes(rfc8785.dumps(document))


def schema_document() -> dict[str, Any]:
    """The JSON Schema of the terms, as checked into ``contracts/schema/``."""
    schema = ContractTerms.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "contract-terms.schema.json", **schema}


def render_schema() -> str:
    """The schema file's text (stable key order, trailing newline)."""
    return json.dumps(schema_document(), indent=2, ensure_ascii=False) + "\n"


class BadKey(ValueError):
    """A public key that is not an Ed25519 key in a form the broker reads."""


def parse_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key given as PEM (SubjectPublicKeyInfo) or base64 of its 32 bytes."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise BadKey("The key is not an Ed25519 public key.")
            return key
        raw = base64.b64decode(text, validate=True)
        if len(raw) != 32:
            raise BadKey("An Ed25519 public key is 32 bytes.")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error) as exc:
        if isinstance(exc, BadKey):
            raise
        raise BadKey("The key is neither PEM nor base64 of a raw Ed25519 key.") from exc


def encode_public_key(key: Ed25519PublicKey) -> str:
    """The standard form the broker stores and shows: base64 of the raw 32 bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign(key: Ed25519PrivateKey, terms: ContractTerms) -> str:
    """A base64 Ed25519 signature over the canonical terms."""
    return base64.b64encode(key.sign(terms.canonical())).decode()


def verify(public_key: str | None, message: bytes, signature: str | None) -> bool:
    """Whether ``signature`` (base64) is ``public_key``'s signature over ``message``.

    Anything missing or malformed is simply not a valid signature.
    """
    if not public_key or not signature:
        return False
    return _verify(public_key, message, signature)


@lru_cache(maxsize=4096)
def _verify(public_key: str, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        parse_public_key(public_key).verify(raw, message)
    except (InvalidSignature, BadKey, ValueError, binascii.Error):
        return False
    return True


def whole_seconds(value: datetime, *, up: bool = False) -> datetime:
    """``value`` in whole seconds (signed documents carry no fractions): the fraction dropped,
    or with ``up`` the next whole second when there is a fraction."""
    whole = value.replace(microsecond=0)
    return whole + timedelta(seconds=1) if up and whole != value else whole


if __name__ == "__main__":  # python -m contracts.terms: rewrite the checked-in schema
    from pathlib import Path

    target = Path(__file__).with_name("schema") / "contract-terms.schema.json"
    target.write_text(render_schema(), encoding="utf-8")
