"""Alembic's environment: migrations run on the connection the broker hands over.

The broker runs Alembic only through ``broker.store.schema`` (``broker db upgrade`` and the
start-up check), which passes an open connection in ``config.attributes["connection"]``: the
upgrade then runs inside that connection's transaction, under its lock, all or nothing.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import broker.store.tables  # noqa: F401  (the tables register on SQLModel.metadata)

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the alembic command line is not how we run
    raise RuntimeError("run migrations with `broker db upgrade`, not the alembic command")

context.configure(connection=connection, target_metadata=SQLModel.metadata,
                  render_as_batch=connection.dialect.name == "sqlite",
                  transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
