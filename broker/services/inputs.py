"""Constrained types and the request base shared by the API's and the console's request
models: whatever reads a request (a JSON body or a console form) validates it the same way."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from broker.domain.names import FIELD_NAME, ORG_ID

FieldName = Annotated[str, StringConstraints(pattern=FIELD_NAME.pattern)]
OrgId = Annotated[str, StringConstraints(pattern=ORG_ID.pattern)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Uuid = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                                r"[0-9a-f]{4}-[0-9a-f]{12}$")]
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


class In(BaseModel):
    """Base of request bodies: unknown fields are an error (no mass assignment). Numbers and
    booleans are strict (no ``0`` for ``false``, no ``"5"`` for ``5``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
