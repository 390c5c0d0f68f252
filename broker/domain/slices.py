"""Consented slices: the part of a dataset its provider agreed to share.

A slice names a subset of the dataset's fields and a row predicate in the same closed filter
grammar as queries (eq, in, range), and records the consent behind it: who consented, when,
and to what. A contract over a slice sees only those fields and only the rows the predicate
keeps; the predicate is added to every query under the contract inside the broker, where the
consumer can neither see nor remove it. Slices never change once published.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.domain.queries import Filter, FilterOp

SLICE_NAME = re.compile(r"^[\w.-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Consent:
    """The consent a slice rests on: who gave it, when, for what, and the record of it."""

    given_by: str
    given_at: datetime
    scope: str
    reference: str | None = None

    def as_json(self) -> dict[str, Any]:
        """As stored and shown."""
        return {"given_by": self.given_by, "given_at": self.given_at.isoformat(),
                "scope": self.scope, "reference": self.reference}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Consent:
        """Back from the stored form."""
        return cls(given_by=data["given_by"], given_at=datetime.fromisoformat(data["given_at"]),
                   scope=data["scope"], reference=data.get("reference"))


@dataclass(frozen=True, slots=True)
class Slice:
    """A named, consented subset of one dataset's fields and rows."""

    id: str
    dataset_id: str
    owner_org: str
    name: str
    fields: tuple[str, ...]
    predicate: tuple[Filter, ...]
    consent: Consent
    created_at: datetime

    def predicate_json(self) -> list[dict[str, Any]]:
        """The predicate as stored and shown."""
        return [{"field": f.field, "op": f.op.value, "value": f.value} for f in self.predicate]

    @staticmethod
    def predicate_from_json(data: list[dict[str, Any]]) -> tuple[Filter, ...]:
        """Back from the stored form."""
        return tuple(Filter(d["field"], FilterOp(d["op"]), d["value"]) for d in data)
