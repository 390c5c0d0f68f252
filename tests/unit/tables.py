"""Run a query plan over a frame with the real storage and engine, for disclosure tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from broker.disclosure.cells import CellTable, read_table
from broker.disclosure.plan import SOURCE, CellPlan, plan_aggregate
from broker.disclosure.scopes import Scopes
from broker.domain.datasets import DatasetSchema
from broker.domain.queries import AggregateSpec
from connectors.crypto import Keyring, create_master_key
from connectors.engine import DuckDBEngine
from connectors.storage import ParquetStorage


def run_table(frame: pd.DataFrame, spec: AggregateSpec, schema: DatasetSchema, tmp: Path,
              *, top: int = 2) -> tuple[CellPlan, CellTable]:
    """Store ``frame`` as a dataset version, plan ``spec`` and read back its cell table."""
    create_master_key(tmp / "master.key")
    storage = ParquetStorage(tmp / "datasets", Keyring(tmp / "master.key"))
    location = storage.write("t", 1, frame, schema.entity_field)
    plan = plan_aggregate(spec, schema, top=top)
    relations = {SOURCE: storage.scan(location)}
    engine = DuckDBEngine()
    try:
        scopes = Scopes.of(storage.dates(location, plan.periods), spec.group_by,
                           spec.filters)
        return plan, read_table(plan, engine.run(relations, plan.sql, plan.params), scopes)
    finally:
        engine.close()


def released(plan: CellPlan, table: CellTable, *, margins: bool = True
             ) -> dict[tuple[tuple[str, object], ...], dict[str, float | int | None]]:
    """Every cell's values keyed by its sorted key items."""
    return {tuple(sorted(table.key(ix).items())): table.values(ix, plan)
            for ix in table.cells(margins=margins)}
