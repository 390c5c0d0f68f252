"""Databases for migration tests: one per kind (fixtures ``url`` and ``engine``, SQLite and
PostgreSQL), and one left as release 0.1.0 left it (``as_release_0_1_0``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, text

from broker.store import schema
from broker.store.db import make_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    """An engine on ``url``."""
    engine = make_engine(url)
    yield engine
    engine.dispose()


def as_release_0_1_0(engine: Engine) -> None:
    """What release 0.1.0's create_schema left: the baseline's tables and triggers, no
    version table."""
    with engine.begin() as conn:
        command.upgrade(schema._config(conn), schema.BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
