"""Dataset schema: declared fields, their types, roles and sensitivity levels."""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from broker.domain.confusables import check_names
from broker.domain.errors import InvalidInput
from broker.domain.names import FIELD_NAME

#: Field and dataset names are identifiers (Unicode letters, digits and underscore, as Chinese
#: column headers need; dataset names may also hold '.' and '-'): no quote, space, separator
#: or control character, so they can never smuggle SQL or paths. SQL quotes them regardless.
DATASET_NAME = re.compile(r"^\w[\w.-]{0,127}$")


class FieldType(StrEnum):
    """Column types a provider may declare."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    DATE = "date"
    BOOLEAN = "boolean"

    @property
    def is_numeric(self) -> bool:
        """Whether sums and means make sense over this type."""
        return self in (FieldType.INTEGER, FieldType.NUMBER)


class FieldRole(StrEnum):
    """What a field is for; policies decide flows from it.

    ``entity`` is the privacy unit (usually the USCC); ``identifier`` never flows in clear;
    ``quasi_identifier`` can single out in combination; ``sensitive`` flows only aggregated.
    """

    ENTITY = "entity"
    DIMENSION = "dimension"
    MEASURE = "measure"
    QUASI_IDENTIFIER = "quasi_identifier"
    IDENTIFIER = "identifier"
    SENSITIVE = "sensitive"


class Sensitivity(StrEnum):
    """Data grading levels, L1 (public) to L4 (core business secret)."""

    L1 = "L1"
    L2 = "L2"
    L3 = "L3"
    L4 = "L4"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One declared column."""

    name: str
    type: FieldType
    role: FieldRole
    sensitivity: Sensitivity = Sensitivity.L1
    hierarchy: str | None = None
    codes: tuple[str, ...] | None = None
    #: Bin edges the provider allows for grouping this number; a query may use any of them.
    bins: tuple[float, ...] | None = None
    #: A checked value format of a string field: ``"uscc"`` (GB 32100 check character).
    format: str | None = None
    #: Decimal places of a number (0 to ``MAX_SCALE``): its values are held and summed as
    #: exact decimals and published rounded to them (see ``sum_scale``).
    scale: int | None = None

    @property
    def sum_scale(self) -> int | None:
        """Decimal places a sum of this field is exact to: the declared scale of a number, 0
        for an integer; None for a number without one (summed as a double, in a fixed order)."""
        if self.type is FieldType.INTEGER:
            return 0
        return self.scale if self.type is FieldType.NUMBER else None

    def as_json(self) -> dict[str, Any]:
        """The declaration as stored and shown (optional keys only when set)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type.value,
                               "role": self.role.value, "sensitivity": self.sensitivity.value}
        if self.hierarchy is not None:
            out["hierarchy"] = self.hierarchy
        if self.codes is not None:
            out["codes"] = list(self.codes)
        if self.bins is not None:
            out["bins"] = list(self.bins)
        if self.format is not None:
            out["format"] = self.format
        if self.scale is not None:
            out["scale"] = self.scale
        return out


def fold_name(name: str) -> str:
    """A field name as an engine that ignores case and Unicode form would see it."""
    return unicodedata.normalize("NFKC", name).casefold()


@dataclass(frozen=True, slots=True)
class DatasetSchema:
    """The declared columns of a dataset, with exactly one entity field."""

    entity_field: str
    fields: tuple[FieldSpec, ...]

    @classmethod
    def of(cls, entity_field: str, fields: Iterable[FieldSpec]) -> DatasetSchema:
        """Check the declaration and build the schema; raises InvalidInput when inconsistent."""
        fields = tuple(fields)
        if not fields:
            raise InvalidInput("A dataset declares at least one field.")
        names = [f.name for f in fields]
        bad = [n for n in names if not FIELD_NAME.fullmatch(n)]
        if bad:
            raise InvalidInput(
                "Field names must be identifiers (letters, digits, underscore; at most 63).",
                fields=bad,
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidInput("Field names must be unique.", fields=dupes)
        # The query engine matches column names regardless of case (DuckDB does), so two names
        # that differ only in case or Unicode form would let a query on one read the other.
        folded = [fold_name(n) for n in names]
        clashes = sorted({n for n, f in zip(names, folded, strict=True) if folded.count(f) > 1})
        if clashes:
            raise InvalidInput("Field names must differ by more than letter case or Unicode "
                               "form.", fields=clashes)
        check_names(names, "Field", key=fold_name, member="fields")
        entities = [f.name for f in fields if f.role is FieldRole.ENTITY]
        if entities != [entity_field]:
            raise InvalidInput(
                "entity_field must name the one field whose role is 'entity'.",
                fields=entities,
            )
        for spec in fields:
            _check_codes(spec)
            _check_bin_grid(spec)
            _check_scale(spec)
        return cls(entity_field=entity_field, fields=fields)

    @property
    def names(self) -> tuple[str, ...]:
        """Field names in declaration order."""
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> FieldSpec:
        """The field called ``name``; InvalidInput when the schema has none."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise InvalidInput("Unknown field.", fields=[name])

    def has_field(self, name: str) -> bool:
        """Whether the schema declares ``name``."""
        return any(spec.name == name for spec in self.fields)


#: The column of every stored version that holds its row's enterprise as a dense index; no
#: declared field can be named so (field names cannot contain '#').
ENTITY_INDEX_COLUMN = "#entity"

#: The column of every stored version that holds its row's atom: the unknown the release audit
#: sees (``broker.disclosure.linked``), ``entity index << ATOM_OWNER_SHIFT | row number``. A row
#: keeps its atom across versions as long as it is unchanged (same values, same enterprise);
#: a changed or new row gets a new one, so a change between versions is a contribution too.
ATOM_COLUMN = "#atom"
ATOM_OWNER_SHIFT = 24

#: Hierarchies a string field may declare, and the pattern of their codes.
#: Values a hierarchy's fields hold: the finest level only (a GB/T 4754 class, four digits
#: with or without the section letter), so every coarser level really is coarser. A code
#: stored at group precision would flow in clear under the "group" level of a generalize form.
HIERARCHY_CODES = {"gbt4754": re.compile(r"^[A-T]?[0-9]{4}$")}
MAX_CODES = 10_000


def _check_codes(spec: FieldSpec) -> None:
    """A declared hierarchy must be known; a code list must be unique, short strings of it."""
    if spec.hierarchy is None and spec.codes is None:
        return
    if spec.type is not FieldType.STRING or spec.role is not FieldRole.DIMENSION:
        raise InvalidInput("Only string dimensions declare a hierarchy or codes.",
                           fields=[spec.name])
    pattern = HIERARCHY_CODES.get(spec.hierarchy) if spec.hierarchy is not None else None
    if spec.hierarchy is not None and pattern is None:
        raise InvalidInput(f"Known hierarchies: {', '.join(HIERARCHY_CODES)}.",
                           fields=[spec.name])
    if spec.codes is None:
        return
    codes = spec.codes
    if not 0 < len(codes) <= MAX_CODES or len(set(codes)) != len(codes) or not all(
        isinstance(c, str) and 0 < len(c) <= 64 for c in codes
    ):
        raise InvalidInput(f"codes takes 1 to {MAX_CODES} distinct strings.", fields=[spec.name])
    if pattern is not None and not all(pattern.fullmatch(c) for c in codes):
        raise InvalidInput("codes do not follow the declared hierarchy.", fields=[spec.name])


MAX_BIN_EDGES = 32

#: The most decimal places a number may declare. Scaled values are stored as DECIMAL(38, s)
#: with at most ``MAX_INTEGER_DIGITS`` digits before the point, so that a sum over any
#: number of rows a dataset can hold (10**11 and more) fits the 38 digits and stays exact.
MAX_SCALE = 9
MAX_INTEGER_DIGITS = 18
DECIMAL_PRECISION = 38


def _check_scale(spec: FieldSpec) -> None:
    """A declared scale: on a number only, an integer from 0 to ``MAX_SCALE``."""
    if spec.scale is None:
        return
    if spec.type is not FieldType.NUMBER:
        raise InvalidInput("Only number fields declare a scale.", fields=[spec.name])
    if (not isinstance(spec.scale, int) or isinstance(spec.scale, bool)
            or not 0 <= spec.scale <= MAX_SCALE):
        raise InvalidInput(f"scale takes an integer from 0 to {MAX_SCALE} (decimal places).",
                           fields=[spec.name])


def _check_bin_grid(spec: FieldSpec) -> None:
    """Declared bin edges: on a number, 1 to 32 finite and strictly increasing."""
    if spec.bins is None:
        return
    edges = spec.bins
    if not spec.type.is_numeric:
        raise InvalidInput("Only numeric fields declare bins.", fields=[spec.name])
    if not (0 < len(edges) <= MAX_BIN_EDGES
            and all(isinstance(e, int | float) and math.isfinite(e) for e in edges)
            and all(a < b for a, b in itertools.pairwise(edges))):
        raise InvalidInput(f"bins takes 1 to {MAX_BIN_EDGES} finite, strictly increasing edges.",
                           fields=[spec.name])


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    """One stored, immutable version: its number, rows, content hash, when it came."""

    version: int
    rows: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Dataset:
    """Catalogue entry of a registered dataset at its latest version."""

    id: str
    owner_org: str
    name: str
    schema: DatasetSchema
    version: int
    rows: int
    sha256: str
    created_at: datetime
