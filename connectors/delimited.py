"""CSV files: read every cell as text, then conform to the declared schema."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from broker.domain.datasets import DatasetSchema
from broker.domain.errors import BadDataset
from connectors.conform import conform

_LINE = re.compile(r"line (\d+)")


def read_csv(path: Path, schema: DatasetSchema) -> pd.DataFrame:
    """Parse a UTF-8 CSV file (with or without a BOM) with a header row; conform it."""
    try:
        raw = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",  # a byte-order mark, as Excel writes, is not part of a name
            engine="c",
            on_bad_lines="error",
        )
    except UnicodeDecodeError as exc:
        raise BadDataset("The file is not UTF-8 encoded text.") from exc
    except pd.errors.EmptyDataError as exc:
        raise BadDataset("The file is empty.") from exc
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        lines = [int(n) for n in _LINE.findall(str(exc))][:1]
        raise BadDataset(
            "The file is not well-formed CSV.",
            [{"column": None, "issue": "malformed-csv", "rows": lines}],
        ) from exc
    return conform(raw, schema)
