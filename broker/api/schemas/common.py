"""Constrained types and the request base shared by every feature's schemas."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from broker.domain.names import FIELD_NAME, ORG_ID
from broker.domain.uscc import is_valid_uscc

FieldName = Annotated[str, StringConstraints(pattern=FIELD_NAME.pattern)]
OrgId = Annotated[str, StringConstraints(pattern=ORG_ID.pattern)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Uscc = Annotated[str, AfterValidator(lambda v: _check_uscc(v))]
Uuid = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                                r"[0-9a-f]{4}-[0-9a-f]{12}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
#: Filter values: JSON scalars that canonical JSON (RFC 8785) can carry exactly, since the query
#: fingerprint in the audit log is computed over them: finite numbers, integers within +-2^53.
SafeInt = Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1, strict=True)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
Flag = Annotated[bool, Field(strict=True)]
Scalar = Annotated[str, StringConstraints(max_length=200)] | SafeInt | FiniteFloat | Flag | None


class ClosedKeys:
    """Marks a mapping whose keys follow a pattern (``patternProperties``) as closed: a key
    outside the pattern is refused, and the schema says so (``additionalProperties: false``)."""

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The mapping's schema, closed to keys outside its pattern."""
        schema = handler(core_schema)
        schema["additionalProperties"] = False
        return schema


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


class In(BaseModel):
    """Base of request bodies: unknown fields are an error (no mass assignment). Numbers and
    booleans are strict (no ``0`` for ``false``, no ``"5"`` for ``5``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
