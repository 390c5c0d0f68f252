"""Composition root: builds the adapters and services once, and the request dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from broker.auth import TokenVerifier
from broker.checkpoints import Checkpointer, DirectorySink, make_sinks
from broker.disclosure.pseudonyms import Pseudonymizer
from broker.domain.errors import Unauthenticated
from broker.domain.principals import Principal, RequestContext
from broker.keys import (
    checkpoint_signer,
    jwt_secret,
    master_keyring,
    pseudonym_secret,
    release_sealer,
)
from broker.org_keys import FileOrgKeyring
from broker.policy.bundle import PolicySources
from broker.policy.decisions import Policies
from broker.policy.factory import make_policy_engine
from broker.services.audit import AuditService
from broker.services.contracts import ContractService
from broker.services.datasets import DatasetService
from broker.services.guard import Guard
from broker.services.orgs import OrgService
from broker.services.queries import QueryService
from broker.settings import Settings
from broker.store.db import create_schema, make_engine
from broker.store.uow import SqlUnitOfWorkFactory
from connectors.delimited import read_csv
from connectors.engine import DuckDBEngine
from connectors.excel import read_xlsx
from connectors.parquet import read_parquet
from connectors.sql import read_sql
from connectors.storage import ParquetStorage


def utc_now() -> datetime:
    """The system clock in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Container:
    """Everything a request may need, made in the app's lifespan."""

    settings: Settings
    engine: Engine
    query_engine: DuckDBEngine
    policies: Policies
    tokens: TokenVerifier
    orgs: OrgService
    datasets: DatasetService
    contracts: ContractService
    queries: QueryService
    audit: AuditService
    checkpointer: Checkpointer


def build_container(settings: Settings) -> Container:
    """Connect to the store, compile the policies, load keys and wire the services."""
    engine = make_engine(settings.db_url)
    create_schema(engine)
    clock = utc_now
    uow = SqlUnitOfWorkFactory(engine, clock)
    policies = Policies(make_policy_engine(settings))
    guard = Guard(policies)
    keyring = FileOrgKeyring(settings.keys_dir / "orgs") if settings.custodial_org_keys else None
    master = master_keyring(settings)  # made on first run, outside the database
    storage = ParquetStorage(settings.datasets_dir, master)
    signer = checkpoint_signer(settings)  # the key is made on first run, outside the database
    checkpointer = Checkpointer(
        uow, signer, make_sinks(settings.checkpoint_sinks, settings.checkpoints_path),
        every_entries=settings.checkpoint_every_entries,
        every_seconds=settings.checkpoint_every_seconds,
    )
    query_engine = DuckDBEngine(settings.engine_threads)
    return Container(
        settings=settings,
        engine=engine,
        query_engine=query_engine,
        policies=policies,
        tokens=TokenVerifier(
            key=jwt_secret(settings),
            algorithms=settings.jwt_algorithms,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway_seconds,
        ),
        orgs=OrgService(uow, guard, clock, keyring),
        datasets=DatasetService(
            uow, guard, storage,
            {"csv": read_csv, "xlsx": read_xlsx, "parquet": read_parquet}, clock,
            sql_reader=read_sql, sql_sources=settings.sql_sources),
        contracts=ContractService(uow, guard, clock, keyring, _purposes(settings)),
        queries=QueryService(uow, guard, policies, storage, query_engine, clock,
                             Pseudonymizer(pseudonym_secret(settings)),
                             sealer=release_sealer(settings, master)),
        audit=AuditService(uow, guard, checkpointer, signer.verifier,
                           DirectorySink(settings.checkpoints_path).notes),
        checkpointer=checkpointer,
    )


def _purposes(settings: Settings) -> frozenset[str]:
    """The purpose catalogue of the policy data contracts may name."""
    catalogue = PolicySources.load(settings.policy_dir).data.get("config", {}).get("purposes")
    return frozenset(catalogue or ())


def get_container(request: Request) -> Container:
    """The app's container."""
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]

bearer = HTTPBearer(auto_error=False, description="JWT issued by the broker or the OIDC provider")


def get_principal(
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The authenticated caller; 401 problem when the token is missing or invalid."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("A bearer token is required.")
    return container.tokens.verify(credentials.credentials)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_context(request: Request, principal: PrincipalDep) -> RequestContext:
    """The caller and the server-assigned request id."""
    return RequestContext(principal=principal, request_id=request.state.request_id)


ContextDep = Annotated[RequestContext, Depends(get_context)]


def _orgs(c: ContainerDep) -> OrgService:
    return c.orgs


def _datasets(c: ContainerDep) -> DatasetService:
    return c.datasets


def _contracts(c: ContainerDep) -> ContractService:
    return c.contracts


def _queries(c: ContainerDep) -> QueryService:
    return c.queries


def _audit(c: ContainerDep) -> AuditService:
    return c.audit


OrgServiceDep = Annotated[OrgService, Depends(_orgs)]
DatasetServiceDep = Annotated[DatasetService, Depends(_datasets)]
ContractServiceDep = Annotated[ContractService, Depends(_contracts)]
QueryServiceDep = Annotated[QueryService, Depends(_queries)]
AuditServiceDep = Annotated[AuditService, Depends(_audit)]
