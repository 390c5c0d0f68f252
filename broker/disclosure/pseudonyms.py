"""Keyed pseudonyms for group keys released under the ``pseudonymize`` form.

A pseudonym is HMAC-SHA256 of the canonical JSON (RFC 8785) of the field, how it is grouped
(its level or bin edges) and the value, under a key derived with HKDF-SHA256 from the
broker's secret and the contract id. Within one contract the same value grouped the same way
always gets the same pseudonym, so a consumer can follow a group across queries; grouped
another way (other bins, another level) or in another field it gets an unrelated one, so
overlapping groupings cannot be lined up to tell which pseudonym is which; across contracts
the pseudonyms are unrelated, so two consumers cannot join their answers on them;
without the secret nobody can test a guessed value (the reason a plain hash is not enough: a
code list or a register of names is small enough to hash whole). This is the "keyed hash"
pseudonymisation of ENISA's *Pseudonymisation techniques and best practices* (2019), 5.2.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.domain.queries import Cell, Dimension, JsonScalar

PREFIX = "ps_"
#: 80 bits of the HMAC: collisions within any realistic code list are out of reach.
DIGITS = 20


class Pseudonymizer:
    """Derives per-contract keys from one secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the pseudonym secret must be at least 32 bytes")
        self._secret = secret

    def key(self, contract_id: str) -> bytes:
        """The HMAC key of one contract."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"broker pseudonym v1\x00" + contract_id.encode()).derive(self._secret)

    def cells(self, contract_id: str, cells: tuple[Cell, ...],
              dimensions: Mapping[str, Dimension]) -> tuple[Cell, ...]:
        """``cells`` with the keys of ``dimensions`` replaced by pseudonyms, the missing value
        (null) included: a null key beside pseudonyms would be a value in clear."""
        if not dimensions:
            return cells
        key = self.key(contract_id)
        return tuple(_replace(c, key, dimensions) for c in cells)


def pseudonym(key: bytes, dimension: Dimension, value: JsonScalar) -> str:
    """The pseudonym of one value of one grouping under one contract's key."""
    grouping = [dimension.field, dimension.level,
                list(dimension.bins) if dimension.bins is not None else None]
    message = rfc8785.dumps([*grouping, value])
    return PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()[:DIGITS]


def _replace(cell: Cell, key: bytes, dimensions: Mapping[str, Dimension]) -> Cell:
    new: dict[str, JsonScalar] = {
        name: pseudonym(key, dimensions[name], value) if name in dimensions else value
        for name, value in cell.key.items()
    }
    return Cell(key=new, values=cell.values, status=cell.status, reason=cell.reason)
