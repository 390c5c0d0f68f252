"""Use-case fixtures: each service wired once, to in-memory fakes where the real adapter needs
the SQL database and to the real in-process components everywhere else (the embedded Rego
engine on ``policies/``, DuckDB, encrypted Parquet storage, the sealer, the pseudonymizer and
the organisation keyring on a temporary directory)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import NoteSigner
from broker.disclosure.pseudonyms import Pseudonymizer
from broker.domain.datasets import FieldRole, FieldSpec, FieldType, Sensitivity
from broker.domain.organisations import OrgKind
from broker.domain.principals import Principal, RequestContext, Role
from broker.policy.bundle import PolicySources
from broker.policy.decisions import Policies
from broker.policy.embedded import EmbeddedPolicyEngine
from broker.services.audit import AuditService
from broker.services.checkpoints import Checkpointer, DirectorySink
from broker.services.contracts import ContractService, ContractView
from broker.services.datasets import DatasetService, DatasetView, FileData
from broker.services.guard import Guard
from broker.services.orgs import OrgService
from broker.services.queries import QueryService
from broker.store.org_keys import FileOrgKeyring
from connectors.crypto import Keyring, TextSealer, create_master_key
from connectors.delimited import read_csv
from connectors.engine import DuckDBEngine
from connectors.parquet import read_parquet
from connectors.storage import ParquetStorage
from policies import POLICY_DIR
from tests.conftest import ENERGY, csv_bytes
from tests.fakes import (
    FakeUnitOfWorkFactory,
    ManualClock,
    SwitchablePolicyEngine,
    contract_terms,
)

#: When every use-case test starts: a Monday morning, UTC.
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

#: The declared schema of ``tests.conftest.ENERGY``.
ENERGY_FIELDS = (
    FieldSpec("uscc", FieldType.STRING, FieldRole.ENTITY, Sensitivity.L2),
    FieldSpec("town", FieldType.STRING, FieldRole.DIMENSION),
    FieldSpec("name", FieldType.STRING, FieldRole.IDENTIFIER, Sensitivity.L2),
    FieldSpec("kwh", FieldType.NUMBER, FieldRole.MEASURE, Sensitivity.L2),
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Someone calling the services; every call is a new request with its own id."""

    principal: Principal

    @property
    def org(self) -> str:
        """The caller's organisation."""
        return self.principal.org

    def ctx(self) -> RequestContext:
        """The context of a new request by this caller."""
        return RequestContext(self.principal, f"req-{uuid.uuid4().hex[:12]}")


def caller(org: str, *roles: Role) -> Caller:
    """A member of ``org`` holding ``roles``."""
    return Caller(Principal(iss="tests", sub=f"user@{org}", org=org, roles=frozenset(roles)))


@pytest.fixture
def clock() -> ManualClock:
    """The clock every service reads; tests move it."""
    return ManualClock(START)


@pytest.fixture
def uow(clock: ManualClock) -> FakeUnitOfWorkFactory:
    """The in-memory store: what the database would hold, and units of work over it."""
    return FakeUnitOfWorkFactory(clock)


@pytest.fixture
def policy_engine() -> Iterator[SwitchablePolicyEngine]:
    """The embedded Rego engine on the real policies, which a test may take down."""
    engine = EmbeddedPolicyEngine(POLICY_DIR)
    try:
        yield SwitchablePolicyEngine(engine)
    finally:
        engine.close()


@pytest.fixture
def guard(policy_engine: SwitchablePolicyEngine) -> Guard:
    """Access checks on the real policies."""
    return Guard(Policies(policy_engine))


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    """The master key of encryption at rest, made on a temporary directory."""
    path = tmp_path / "keys" / "master.key"
    create_master_key(path)
    return Keyring(path)


@pytest.fixture
def storage(tmp_path: Path, keyring: Keyring) -> ParquetStorage:
    """Encrypted dataset storage on a temporary directory."""
    return ParquetStorage(tmp_path / "datasets", keyring)


@pytest.fixture
def org_keys(tmp_path: Path) -> FileOrgKeyring:
    """The keys the broker holds for organisations registered without one of their own."""
    return FileOrgKeyring(tmp_path / "keys" / "orgs")


@pytest.fixture
def org_service(uow: FakeUnitOfWorkFactory, guard: Guard, clock: ManualClock,
                org_keys: FileOrgKeyring) -> OrgService:
    """The organisation registry."""
    return OrgService(uow=uow, guard=guard, clock=clock, keyring=org_keys)


@pytest.fixture
def dataset_service(uow: FakeUnitOfWorkFactory, guard: Guard, storage: ParquetStorage,
                    clock: ManualClock) -> DatasetService:
    """Dataset registration and the catalogue."""
    return DatasetService(uow=uow, guard=guard, storage=storage,
                          readers={"csv": read_csv, "parquet": read_parquet}, clock=clock)


@pytest.fixture
def contract_service(uow: FakeUnitOfWorkFactory, guard: Guard, clock: ManualClock,
                     org_keys: FileOrgKeyring) -> ContractService:
    """The contract lifecycle, signing for organisations whose keys the broker holds."""
    catalogue: dict[str, Any] = PolicySources.load(POLICY_DIR).data["config"]["purposes"]
    return ContractService(uow=uow, guard=guard, clock=clock, keyring=org_keys,
                           purposes=frozenset(catalogue))


@pytest.fixture
def query_service(uow: FakeUnitOfWorkFactory, guard: Guard, storage: ParquetStorage,
                  clock: ManualClock, keyring: Keyring,
                  tmp_path: Path) -> Iterator[QueryService]:
    """Aggregate queries on DuckDB, the release cache sealed under the master key."""
    engine = DuckDBEngine(threads=1)
    try:
        yield QueryService(
            uow=uow, guard=guard, policies=guard.policies, storage=storage, engine=engine,
            clock=clock, pseudonyms=Pseudonymizer(b"pseudonym-secret-for-unit-tests-0123456789"),
            sealer=TextSealer(keyring, tmp_path / "keys" / "release-cache.key"))
    finally:
        engine.close()


@pytest.fixture
def checkpoint_signer() -> NoteSigner:
    """The key that signs checkpoints of the audit log."""
    return NoteSigner("broker.test/audit", Ed25519PrivateKey.generate())


@pytest.fixture
def audit_service(uow: FakeUnitOfWorkFactory, guard: Guard, checkpoint_signer: NoteSigner,
                  tmp_path: Path) -> AuditService:
    """Reading, proving and verifying the audit log; checkpoints copied to a directory."""
    outside = DirectorySink(tmp_path / "checkpoints")
    checkpointer = Checkpointer(uow, checkpoint_signer, [outside], every_entries=1000,
                                every_seconds=3600)
    return AuditService(uow=uow, guard=guard, checkpointer=checkpointer,
                        verifier=checkpoint_signer.verifier, outside_notes=outside.notes)


class County:
    """The test county, set up through the services as its people would: the operator
    registers the organisations (the broker holds their keys), and grid registers its energy
    data on request."""

    def __init__(self, orgs: OrgService, datasets: DatasetService, contracts: ContractService,
                 files: Path) -> None:
        self.datasets = datasets
        self.contracts = contracts
        self.files = files
        self.admin = caller("broker-ops", Role.ADMIN)
        self.grid = caller("grid", Role.PROVIDER)
        self.water = caller("water", Role.PROVIDER)
        self.econ = caller("econ", Role.CONSUMER)
        self.env = caller("env", Role.CONSUMER)
        self.auditor = caller("audit-office", Role.AUDITOR)
        for org, kind in [("grid", OrgKind.ENTERPRISE), ("water", OrgKind.ENTERPRISE),
                          ("econ", OrgKind.DEPARTMENT), ("env", OrgKind.DEPARTMENT),
                          ("audit-office", OrgKind.AUDITOR)]:
            orgs.register(self.admin.ctx(), org_id=org, name=org.title(), kind=kind)

    def csv(self, frame: pd.DataFrame, name: str = "data.csv") -> FileData:
        """``frame`` written as a CSV upload."""
        path = self.files / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(csv_bytes(frame))
        return FileData(path, "csv")

    def energy(self, by: Caller | None = None, name: str = "energy") -> DatasetView:
        """The energy data registered by ``by`` (grid)."""
        return self.datasets.register((by or self.grid).ctx(), name=name, entity_field="uscc",
                                      fields=ENERGY_FIELDS, data=self.csv(ENERGY))

    def offer(self, dataset_id: str, consumer: Caller | None = None,
              **terms: Any) -> ContractView:
        """Grid offers ``terms`` on ``dataset_id`` to ``consumer`` (econ)."""
        return self.contracts.offer(self.grid.ctx(),
                                    contract_terms(dataset_id, starts=START, **terms),
                                    consumer_org=(consumer or self.econ).org)

    def active_contract(self, dataset_id: str, consumer: Caller | None = None,
                        **terms: Any) -> ContractView:
        """A contract grid offered on ``dataset_id`` and ``consumer`` (econ) accepted."""
        offered = self.offer(dataset_id, consumer, **terms)
        return self.contracts.accept((consumer or self.econ).ctx(), offered.contract.id)


@pytest.fixture
def county(org_service: OrgService, dataset_service: DatasetService,
           contract_service: ContractService, tmp_path: Path) -> County:
    """The organisations registered, nothing else yet."""
    return County(org_service, dataset_service, contract_service, tmp_path / "uploads")
