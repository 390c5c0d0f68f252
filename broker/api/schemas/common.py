"""Constrained types and the request base shared by every feature's schemas."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from broker.domain.uscc import is_valid_uscc

# The request base and the types a query names live with the use cases, which the console's
# forms are read into as well.
from broker.services.inputs import (
    ClosedKeys,
    FieldName,
    FiniteFloat,
    Flag,
    In,
    OrgId,
    SafeInt,
    Scalar,
    Slug,
    Text,
    Uuid,
)

__all__ = ["ClosedKeys", "DateTimeText", "FieldName", "FiniteFloat", "Flag", "In", "OrgId",
           "SafeInt", "Scalar", "Slug", "Text", "Uscc", "Uuid"]

Uscc = Annotated[str, AfterValidator(lambda v: _check_uscc(v))]


#: RFC 3339 date-time with its offset: what ``format: date-time`` promises. Pydantic also reads
#: numbers (Unix time) and dates without an offset, which the schema does not admit.
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?"
                        r"([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str) and _DATE_TIME.fullmatch(value):
        return value
    raise ValueError("an RFC 3339 date-time with a time zone, e.g. 2026-01-01T00:00:00Z")


#: A date-time given as RFC 3339 text with a time zone (query parameters).
DateTimeText = Annotated[datetime, BeforeValidator(_rfc3339)]


def _check_uscc(value: str) -> str:
    if not is_valid_uscc(value):
        raise ValueError("not a unified social credit code with a valid check character")
    return value

