"""Ledger ids, the audit positions they point at and dataset row counts are 64-bit.

Release 0.1.0 declared them INTEGER, which PostgreSQL makes 32-bit: the release ledger writes
one row per published or protected form (hundreds per query), so a county's ledger ids pass
2^31 in a few million queries, and an entry's ``audit_seq`` could not hold a position the
BIGINT audit log reaches; a lake dataset's row count passes 2^31 too. SQLite's INTEGER is
already 64-bit (and its rowid keys must stay INTEGER), so there is nothing to do there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: table -> columns made BIGINT (an ``id`` column's sequence too).
WIDENED = {
    "release_forms": ("id", "audit_seq"),
    "released_sets": ("id", "audit_seq"),
    "release_cache": ("audit_seq",),
    "dataset_versions": ("rows",),
}


def upgrade() -> None:
    """ALTER the columns (and the id sequences) to BIGINT on PostgreSQL."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in WIDENED.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.BigInteger(), existing_nullable=False)
        if "id" in columns:
            op.execute(f"ALTER SEQUENCE {table}_id_seq AS bigint")


def downgrade() -> None:
    """There is no way back: the audit log only moves forward (restore a backup instead)."""
    raise NotImplementedError("the audit log only moves forward: restore a backup instead")
