"""The composition root: the container of adapters and services, and the FastAPI app.

Nothing connects at import time: the container is built in the app's lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from fastapi import Depends, FastAPI
from sqlalchemy import Engine, text

from broker import __version__, console
from broker.api import problems
from broker.api.auth import BearerVerifier, TokenVerifier, mint_token
from broker.api.limits import PrincipalLimits, PrincipalMiddleware
from broker.api.middleware import (
    BodyLimitMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
    RequestMetrics,
    UnexpectedErrorMiddleware,
)
from broker.api.oidc import OidcVerifier
from broker.api.routes import (
    audit,
    contracts,
    datasets,
    health,
    indicators,
    orgs,
    queries,
    slices,
)
from broker.api.routes.common import refuse_unknown_query
from broker.api.routes.health import ReadyProbe
from broker.console.headers import ConsoleHeaders
from broker.console.oidc import OidcLogin
from broker.disclosure.pseudonyms import Pseudonymizer
from broker.domain.ports import utc_now
from broker.domain.principals import Role
from broker.observability.metrics import BrokerMetrics, CheckpointLag
from broker.observability.traces import Tracing, start_tracing
from broker.policy.bundle import PolicySources
from broker.policy.cache import CachedPolicyEngine
from broker.policy.decisions import Policies
from broker.policy.factory import close_policy_engine, make_policy_engine
from broker.services.audit import AuditService
from broker.services.checkpoints import Checkpointer, DirectorySink, make_sinks
from broker.services.contracts import ContractService
from broker.services.datasets import DatasetService
from broker.services.guard import Guard
from broker.services.health import HealthService
from broker.services.indicators import IndicatorService
from broker.services.orgs import OrgService
from broker.services.queries import QueryService
from broker.settings import Settings
from broker.store.db import create_schema, make_engine, read_only
from broker.store.keys import (
    checkpoint_signer,
    console_secret,
    jwt_secret,
    master_keyring,
    pseudonym_secret,
    release_sealer,
)
from broker.store.leases import SIGNER, lease_for
from broker.store.org_keys import FileOrgKeyring
from broker.store.uow import SqlUnitOfWorkFactory
from connectors.delimited import read_csv_table
from connectors.engine import DuckDBEngine
from connectors.excel import read_xlsx
from connectors.parquet import read_parquet
from connectors.sql import read_sql
from connectors.storage import ParquetStorage

DESCRIPTION = """
Enterprises and data-holding departments register datasets and offer **usage contracts**;
government departments ask **aggregate queries** that run inside the broker and release only
cells that pass disclosure control; **Rego policies** decide which fields may flow; every
access is written to a **hash-chained audit log** that security staff verify.

All `/v1` calls need `Authorization: Bearer <JWT>`. Errors are `application/problem+json`.
"""


@dataclass(frozen=True, slots=True)
class Container:
    """Everything a request may need, made in the app's lifespan."""

    settings: Settings
    engine: Engine
    query_engine: DuckDBEngine
    policies: Policies
    tokens: BearerVerifier
    orgs: OrgService
    indicators: IndicatorService
    datasets: DatasetService
    contracts: ContractService
    queries: QueryService
    audit: AuditService
    checkpointer: Checkpointer
    console: console.ConsoleAuth
    health: HealthService

    def ready(self) -> str:
        """The database answers and the policy engine decides; the policy revision."""
        ping_database(self.engine)
        return self.policies.probe()


def ping_database(engine: Engine) -> None:
    """Ask the database for one row, as readers read it (a snapshot, not a writer's lock,
    which a busy broker's releases queue for)."""
    with read_only(engine).connect() as conn:
        conn.execute(text("SELECT 1"))


def build_container(settings: Settings, *, metrics: BrokerMetrics | None = None,
                    tracing: Tracing | None = None) -> Container:
    """Connect to the store, compile the policies, load keys and wire the services; with
    ``metrics``, every audit append is counted; with ``tracing``, the store's statements are
    traced."""
    engine = make_engine(settings.db_url)
    if tracing is not None:
        tracing.instrument_engine(engine)
    create_schema(engine)
    clock = utc_now
    uow = SqlUnitOfWorkFactory(engine, clock, metrics.audit_appended if metrics else None)
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
        lease=lease_for(engine, SIGNER),  # one periodic signer among several workers
    )
    query_engine = DuckDBEngine(settings.engine_threads)
    return Container(
        settings=settings,
        engine=engine,
        query_engine=query_engine,
        policies=policies,
        tokens=make_token_verifier(settings),
        orgs=OrgService(uow, guard, clock, keyring, operator_org=settings.operator_org),
        indicators=IndicatorService(uow, guard, clock),
        datasets=DatasetService(
            uow, guard, storage,
            {"csv": read_csv_table, "xlsx": read_xlsx, "parquet": read_parquet}, clock,
            sql_reader=read_sql, sql_sources=settings.sql_sources),
        contracts=ContractService(uow, guard, clock, keyring, _purposes(settings)),
        queries=QueryService(uow, guard, policies, storage, query_engine, clock,
                             Pseudonymizer(pseudonym_secret(settings)),
                             sealer=release_sealer(settings, master)),
        audit=AuditService(uow, guard, checkpointer, signer.verifier,
                           DirectorySink(settings.checkpoints_path).notes,
                           DirectorySink(settings.checkpoints_path).notes_for),
        checkpointer=checkpointer,
        console=console.ConsoleAuth(
            secret=console_secret(settings), max_age=settings.console_session_seconds,
            dev_login=_dev_minter(settings) if settings.dev_login else None,
            dev_login_anywhere=settings.console_dev_login is True,
            oidc=OidcLogin.from_settings(settings),
            operator_org=settings.operator_org),
        health=HealthService(database=partial(ping_database, engine), policy=policies.probe,
                             revision=lambda: policies.revision,
                             engine_kind=settings.policy_engine, checkpointer=checkpointer),
    )


def _dev_minter(settings: Settings) -> console.session.DevMinter:
    """The console's dev login: a dev token for the organisation and role picked."""
    key = jwt_secret(settings)
    ttl = min(settings.console_session_seconds, settings.jwt_max_ttl_seconds)

    def mint(org: str, role: Role) -> str:
        return mint_token(key=key, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                          sub=f"console:{role.value}@{org}", org=org, roles=[role.value],
                          ttl=ttl, algorithm=settings.jwt_algorithms[0])

    return mint


def make_token_verifier(settings: Settings) -> BearerVerifier:
    """The OIDC provider's verifier when ``BROKER_OIDC_ISSUER`` is set (the dev secret is then
    neither read nor made, so no HS256 token passes); else the dev HS256 one.

    The provider is not contacted here: its discovery document and keys are fetched with the
    first token, so the broker starts (and answers /healthz) while the provider is down, and
    such a token gets a 503 problem until it is back."""
    if settings.oidc_issuer:
        return OidcVerifier.from_settings(settings)
    return TokenVerifier(
        key=jwt_secret(settings),
        algorithms=settings.jwt_algorithms,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway_seconds,
        max_ttl=settings.jwt_max_ttl_seconds,
    )


def _purposes(settings: Settings) -> frozenset[str]:
    """The purpose catalogue of the policy data contracts may name."""
    catalogue = PolicySources.load(settings.policy_dir).data.get("config", {}).get("purposes")
    return frozenset(catalogue or ())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings``; the store, policies and keys open in the lifespan."""
    settings = settings or Settings()

    tracing = start_tracing(settings.otlp_endpoint, service_version=__version__)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics: RequestMetrics = app.state.metrics
        container = build_container(settings, metrics=metrics, tracing=tracing)
        container.orgs.check_operator()
        app.state.container = container
        app.state.ready_probe = ReadyProbe()
        if (isinstance(container.policies.engine, CachedPolicyEngine)
                and not metrics.multiprocess):
            metrics.watch_policy_cache(container.policies.engine)
        metrics.watch_checkpoints(lambda: _lag(container.checkpointer))
        container.checkpointer.start()
        try:
            yield
        finally:
            app.state.ready_probe.close()
            container.health.close()
            container.checkpointer.stop()
            container.query_engine.close()
            close_policy_engine(container.policies.engine)
            container.engine.dispose()
            if isinstance(container.tokens, OidcVerifier):
                container.tokens.close()
            if tracing is not None:
                tracing.shutdown()

    app = FastAPI(
        title="Data-sharing broker",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's own telemetry stays off, even when its environment switch asks for it: it
        # would export exception messages (which can quote values) and a second request span.
        # The broker's traces come from broker.observability.traces.
        telemetry={"auto_configure": False, "tracing": False, "metrics": False, "logs": False,
                   "operation_spans": False},
    )
    app.state.metrics = RequestMetrics()
    problems.install(app)
    for module in (orgs, datasets, slices, contracts, queries, indicators, audit, health):
        # A filter misspelt would otherwise be ignored and the answer cover more than asked.
        app.include_router(module.router, dependencies=[Depends(refuse_unknown_query)])
    console.install(app)
    app.add_middleware(PrincipalMiddleware, refused=app.state.metrics.limited,
                       denied=app.state.metrics.denied, session=console.session_token,
                       limits=PrincipalLimits(settings.rate_limit,
                                              settings.max_concurrent_per_principal,
                                              settings.max_concurrent_per_org))
    app.add_middleware(UnexpectedErrorMiddleware)  # nothing re-raises past it
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(BodyLimitMiddleware, body_limit=settings.max_body_bytes,
                       upload_limit=settings.max_upload_bytes)
    app.add_middleware(ConsoleHeaders)  # on every console answer, the refusals above included
    if tracing is not None:  # the request span wraps every middleware
        tracing.instrument_app(app)
    app.add_middleware(RequestIdMiddleware)
    return app


def _lag(checkpointer: Checkpointer) -> CheckpointLag | None:
    """The checkpoint lag as the metrics show it."""
    lag = checkpointer.lag()
    return None if lag is None else CheckpointLag(*lag)
