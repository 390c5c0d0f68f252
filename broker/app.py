"""The FastAPI application factory. Nothing connects at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from broker import __version__
from broker.api import problems
from broker.api.deps import build_container
from broker.api.middleware import (
    BodyLimitMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
    RequestMetrics,
    UnexpectedErrorMiddleware,
)
from broker.api.routes import audit, contracts, datasets, health, orgs, queries, slices
from broker.policy.cache import CachedPolicyEngine
from broker.policy.factory import close_policy_engine
from broker.settings import Settings

DESCRIPTION = """
Enterprises and data-holding departments register datasets and offer **usage contracts**;
government departments ask **aggregate queries** that run inside the broker and release only
cells that pass disclosure control; **Rego policies** decide which fields may flow; every
access is written to a **hash-chained audit log** that security staff verify.

All `/v1` calls need `Authorization: Bearer <JWT>`. Errors are `application/problem+json`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings``; the store, policies and keys open in the lifespan."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container = build_container(settings)
        app.state.container = container
        if isinstance(container.policies.engine, CachedPolicyEngine):
            app.state.metrics.watch_policy_cache(container.policies.engine)
        container.checkpointer.start()
        try:
            yield
        finally:
            container.checkpointer.stop()
            container.query_engine.close()
            close_policy_engine(container.policies.engine)
            container.engine.dispose()

    app = FastAPI(
        title="Data-sharing broker",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.metrics = RequestMetrics()
    problems.install(app)
    for module in (orgs, datasets, slices, contracts, queries, audit, health):
        app.include_router(module.router)
    app.add_middleware(UnexpectedErrorMiddleware)  # innermost: nothing re-raises past it
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(BodyLimitMiddleware, body_limit=settings.max_body_bytes,
                       upload_limit=settings.max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
