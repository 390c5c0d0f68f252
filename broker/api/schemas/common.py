"""Constrained types and the request base shared by every feature's schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

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


def _check_uscc(value: str) -> str:
    if not is_valid_uscc(value):
        raise ValueError("not a unified social credit code with a valid check character")
    return value


class In(BaseModel):
    """Base of request bodies: unknown fields are an error (no mass assignment). Numbers and
    booleans are strict (no ``0`` for ``false``, no ``"5"`` for ``5``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
