"""Utility of the release audit: what an honest department's dashboard keeps.

An economic bureau's dashboard of one year of the synthetic county (DESIGN.md section 7):
fifteen ordinary tables of towns, industries, quarters, months and size bands, with counts,
sums, means and ratios. Each table is asked once alone, on a dataset of its own where nothing
was published before, and once as part of the whole dashboard, in order, on one dataset. The
script prints, per table and in all, how many cells each way publishes, the share the
dashboard keeps, the cells withheld as ``linked``, and the time the queries took.

    .venv/bin/python -m tests.bench.release_utility [--enterprises 3000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from broker.app import Container, build_container
from broker.demo.county import INDUSTRIES, TOWNS, generate_county
from broker.domain.datasets import Dataset, DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.organisations import OrgKind
from broker.domain.principals import Principal, RequestContext, Role
from broker.domain.queries import AggregateSpec, CellStatus, Dimension, Measure, MeasureFn
from broker.settings import Settings
from contracts.model import Dominance, FieldForm, Terms

SIZE_BANDS = (10.0, 50.0, 200.0)
KWH, OUT, TAX = "electricity_kwh", "output_value", "tax_paid"
COUNT = Measure(MeasureFn.COUNT)


def _sum(field: str) -> Measure:
    return Measure(MeasureFn.SUM, field)


#: The dashboard: (name, group_by, measures).
DASHBOARD: list[tuple[str, tuple[Dimension, ...], tuple[Measure, ...]]] = [
    ("town x quarter", (Dimension("town"), Dimension("month", level="quarter")),
     (COUNT, _sum(KWH))),
    ("town x month", (Dimension("town"), Dimension("month", level="month")), (_sum(KWH),)),
    ("industry x quarter", (Dimension("industry"), Dimension("month", level="quarter")),
     (_sum(OUT),)),
    ("industry x month", (Dimension("industry"), Dimension("month", level="month")),
     (_sum(KWH),)),
    ("town x industry", (Dimension("town"), Dimension("industry")), (COUNT, _sum(KWH))),
    ("town x industry x quarter", (Dimension("town"), Dimension("industry"),
                                   Dimension("month", level="quarter")), (_sum(KWH),)),
    ("size x quarter", (Dimension("employees", bins=SIZE_BANDS),
                        Dimension("month", level="quarter")), (COUNT, _sum(OUT))),
    ("town x size", (Dimension("town"), Dimension("employees", bins=SIZE_BANDS)), (COUNT,)),
    ("industry x size", (Dimension("industry"), Dimension("employees", bins=SIZE_BANDS)),
     (_sum(OUT),)),
    ("mean kWh by town", (Dimension("town"),), (Measure(MeasureFn.MEAN, KWH),)),
    ("tax rate by industry", (Dimension("industry"),),
     (Measure(MeasureFn.RATIO, numerator=TAX, denominator=OUT),)),
    ("energy intensity by town x quarter", (Dimension("town"),
                                            Dimension("month", level="quarter")),
     (Measure(MeasureFn.RATIO, numerator=KWH, denominator=OUT),)),
    ("county by month", (Dimension("month", level="month"),), (COUNT, _sum(KWH))),
    ("division x quarter", (Dimension("industry", level="division"),
                            Dimension("month", level="quarter")), (_sum(KWH),)),
    ("town x industry x month", (Dimension("town"), Dimension("industry"),
                                 Dimension("month", level="month")), (_sum(KWH),)),
]


def _ctx(org: str, role: Role) -> RequestContext:
    return RequestContext(Principal("bench", f"u@{org}", org, frozenset({role})), "bench")


def _frame(enterprises: int) -> pd.DataFrame:
    county = generate_county(enterprises=enterprises, months=12)
    firms = county.enterprises[["uscc", "town", "industry", "employees"]]
    return county.monthly.merge(firms, on="uscc")[
        ["uscc", "town", "industry", "employees", "month", KWH, OUT, TAX]]


SCHEMA = DatasetSchema.of("uscc", [
    FieldSpec("uscc", FieldType.STRING, FieldRole.ENTITY),
    FieldSpec("town", FieldType.STRING, FieldRole.DIMENSION, codes=tuple(TOWNS)),
    FieldSpec("industry", FieldType.STRING, FieldRole.DIMENSION, hierarchy="gbt4754",
              codes=tuple(INDUSTRIES)),
    FieldSpec("employees", FieldType.INTEGER, FieldRole.DIMENSION, bins=SIZE_BANDS),
    FieldSpec("month", FieldType.DATE, FieldRole.DIMENSION),
    FieldSpec(KWH, FieldType.NUMBER, FieldRole.MEASURE),
    FieldSpec(OUT, FieldType.NUMBER, FieldRole.MEASURE),
    FieldSpec(TAX, FieldType.NUMBER, FieldRole.MEASURE),
])


def dataset_contract(container: Container, frame: pd.DataFrame, *, month: FieldForm,
                     queries_per_day: int) -> str:
    """Store ``frame`` (sealed) as a new dataset of ``grid`` and return the id of an active
    contract of it with ``econ``; ``month`` is the form the month is released in."""
    grid, econ = _ctx("grid", Role.PROVIDER), _ctx("econ", Role.CONSUMER)
    dataset = Dataset(id=str(uuid.uuid4()), owner_org="grid", name=f"d{uuid.uuid4().hex}",
                      schema=SCHEMA, version=1, rows=len(frame), sha256="0" * 64,
                      created_at=datetime.now(UTC))
    location = container.datasets.storage.write(dataset.id, 1, frame, "uscc")
    with container.datasets.uow() as uow:
        uow.datasets.add(dataset, path=location)
        uow.commit()
    now = datetime.now(UTC)
    offered = container.contracts.offer(grid, Terms(
        dataset_id=dataset.id, purposes=("energy-planning",),
        fields={"town": FieldForm.CLEAR, "industry": FieldForm.CLEAR, "month": month,
                "employees": FieldForm.GENERALIZE, KWH: FieldForm.AGGREGATE,
                OUT: FieldForm.AGGREGATE, TAX: FieldForm.AGGREGATE},
        k_min=5, dominance=Dominance(), valid_from=now - timedelta(minutes=1),
        valid_until=now + timedelta(days=1), max_queries_per_day=queries_per_day),
        consumer_org="econ").contract
    container.contracts.accept(econ, offered.id)
    return offered.id


def registered(container: Container) -> None:
    """The grid company and the economic bureau, registered."""
    admin = _ctx("broker-ops", Role.ADMIN)
    container.orgs.register(admin, org_id="grid", name="Grid", kind=OrgKind.ENTERPRISE)
    container.orgs.register(admin, org_id="econ", name="Econ", kind=OrgKind.DEPARTMENT)


def main() -> None:
    """Ask the dashboard alone and together; print what it keeps."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--enterprises", type=int, default=3000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="broker-utility-"))
    try:
        _run(workdir, _frame(args.enterprises))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # sealed data only, but leave nothing


def _run(workdir: Path, frame: pd.DataFrame) -> None:
    container = build_container(Settings(data_dir=workdir))
    registered(container)
    econ = _ctx("econ", Role.CONSUMER)

    def contract() -> str:
        return dataset_contract(container, frame, month=FieldForm.GENERALIZE,
                                queries_per_day=10_000)

    def ask(contract_id: str, dims: tuple[Dimension, ...], measures: tuple[Measure, ...]
            ) -> tuple[int, int, float]:
        t = time.perf_counter()
        release = container.queries.aggregate(econ, AggregateSpec(
            contract_id, "energy-planning", dims, measures, totals=True))
        took = time.perf_counter() - t
        published = sum(c.status is CellStatus.PUBLISHED for c in release.cells)
        return published, release.suppressed.get("linked", 0), took

    shared = contract()
    print(f"{len(frame):,} monthly rows; k = 5, (2, 85%) dominance; margins included")
    print(f"{'table':>36} {'alone':>6} {'in dashboard':>13} {'kept':>6} {'linked':>7} "
          f"{'ms alone':>9} {'ms dashboard':>13}")
    total_alone = total_kept = total_linked = 0
    for name, dims, measures in DASHBOARD:
        alone, _, t_alone = ask(contract(), dims, measures)
        kept, linked, t_shared = ask(shared, dims, measures)
        total_alone += alone
        total_kept += kept
        total_linked += linked
        share = kept / alone if alone else 1.0
        print(f"{name:>36} {alone:6d} {kept:13d} {share:6.1%} {linked:7d} "
              f"{t_alone * 1000:9.0f} {t_shared * 1000:13.0f}")
    print(f"{'all':>36} {total_alone:6d} {total_kept:13d} "
          f"{total_kept / max(1, total_alone):6.1%} {total_linked:7d}")
    container.query_engine.close()
    container.engine.dispose()


if __name__ == "__main__":
    main()
