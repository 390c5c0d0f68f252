"""Baseline: the schema of release 0.1.0, the last broker without migrations.

A database made by 0.1.0 already has all of this: ``broker db upgrade`` stamps it at this
revision (after checking it really is that schema) instead of running it. Frozen: later
changes are new revisions, never edits here. The table definitions are written out, not
imported from ``broker.store.tables``, so this revision keeps making the 0.1.0 schema however
the code's tables change.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = ("audit_entries", "audit_nodes", "audit_checkpoints")

SQLITE_TRIGGERS = [
    *(f"""CREATE TRIGGER {table}_no_{op_.lower()} BEFORE {op_} ON {table}
        BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"""
      for table in APPEND_ONLY for op_ in ("UPDATE", "DELETE")),
    """CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
        BEGIN SELECT RAISE(ABORT, 'the audit head cannot be deleted'); END""",
    """CREATE TRIGGER audit_head_forward BEFORE UPDATE ON audit_head
        WHEN NEW.size < OLD.size OR NEW.id != OLD.id
        BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward'); END""",
]

# Run through the driver with parameters, so a literal % is written %%.
POSTGRESQL_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '%% is append-only', TG_TABLE_NAME; END $$""",
    """CREATE OR REPLACE FUNCTION audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP <> 'UPDATE' OR NEW.size < OLD.size OR NEW.id <> OLD.id THEN
            RAISE EXCEPTION 'the audit head only moves forward';
          END IF;
          RETURN NEW;
        END $$""",
    *(f"""CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
        FOR EACH ROW EXECUTE FUNCTION audit_append_only()""" for table in APPEND_ONLY),
    *(f"""CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"""
      for table in (*APPEND_ONLY, "audit_head")),
    """CREATE OR REPLACE TRIGGER audit_head_forward BEFORE UPDATE OR DELETE ON audit_head
        FOR EACH ROW EXECUTE FUNCTION audit_head_forward()""",
]

GENESIS_HASH = "0" * 64


def _generated(name: str, *path: str, boolean: bool = False) -> sa.Column[Any]:
    """A column the database computes from the entry's JSON body (stored)."""
    if op.get_bind().dialect.name == "postgresql":
        value = f"((body)::jsonb #>> '{{{','.join(path)}}}')"
        expression = f"({value})::boolean" if boolean else value
    else:
        steps = "".join(f"[{s}]" if s.isdigit() else f".{s}" for s in path)
        expression = f"json_extract(body, '${steps}')"
    kind: Any = sa.Boolean() if boolean else sa.Text()
    return sa.Column(name, kind, sa.Computed(sa.text(expression), persisted=True),
                     nullable=True)


def upgrade() -> None:
    """Create the 0.1.0 tables, the append-only triggers and the audit head row."""
    op.create_table('audit_checkpoints',
    sa.Column('size', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('root', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.String(length=32), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('size')
    )
    op.create_table('audit_entries',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('leaf_hash', sa.String(length=64), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    _generated('ts', 'ts'),
    _generated('action', 'action'),
    _generated('actor_sub', 'actor', 'sub'),
    _generated('actor_org', 'actor', 'org'),
    _generated('dataset_id', 'resource', 'dataset_id'),
    _generated('contract_id', 'resource', 'contract_id'),
    _generated('allowed', 'decision', 'allowed', boolean=True),
    _generated('source0_dataset_id', 'resource', 'sources', '0', 'dataset_id'),
    _generated('source0_contract_id', 'resource', 'sources', '0', 'contract_id'),
    _generated('source1_dataset_id', 'resource', 'sources', '1', 'dataset_id'),
    _generated('source1_contract_id', 'resource', 'sources', '1', 'contract_id'),
    _generated('source2_dataset_id', 'resource', 'sources', '2', 'dataset_id'),
    _generated('source2_contract_id', 'resource', 'sources', '2', 'contract_id'),
    _generated('source3_dataset_id', 'resource', 'sources', '3', 'dataset_id'),
    _generated('source3_contract_id', 'resource', 'sources', '3', 'contract_id'),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('leaf_hash'),
    sa.UniqueConstraint('prev_hash')
    )
    for column in ("action", "actor_org", "actor_sub", "contract_id", "dataset_id", "ts"):
        op.create_index(op.f(f"ix_audit_entries_{column}"), "audit_entries", [column])
    # A cross-source query's sources: partial indexes (most entries have none).
    for n in range(4):
        for kind in ("dataset", "contract"):
            column = f"source{n}_{kind}_id"
            where = sa.text(f"{column} IS NOT NULL")
            op.create_index(f"ix_audit_entries_{column}", "audit_entries", [column],
                            sqlite_where=where, postgresql_where=where)

    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('head_hash', sa.String(length=64), nullable=False),
    sa.Column('frontier', sa.Text(), server_default='', nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('audit_nodes',
    sa.Column('level', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('idx', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('level', 'idx')
    )
    op.create_table('indicators',
    sa.Column('id', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('unit', sa.String(length=50), nullable=False),
    sa.Column('definition', sa.Text(), nullable=False),
    sa.Column('source', sa.JSON(), nullable=False),
    sa.Column('checks', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('orgs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('uscc', sa.String(length=18), nullable=True),
    sa.Column('public_key', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('release_cache',
    sa.Column('dataset_id', sa.String(length=36), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('audit_seq', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('dataset_id', 'fingerprint')
    )
    op.create_table('release_forms',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.String(length=36), nullable=False),
    sa.Column('quantity', sa.String(length=1024), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('atoms', sa.LargeBinary(), nullable=False),
    sa.Column('numbers', sa.Text(), nullable=True),
    sa.Column('audit_seq', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_release_forms_dataset_id_id', 'release_forms', ['dataset_id', 'id'])

    op.create_table('released_sets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.String(length=36), nullable=False),
    sa.Column('measure', sa.String(length=1024), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('members', sa.LargeBinary(), nullable=False),
    sa.Column('audit_seq', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_released_sets_dataset_id_id', 'released_sets', ['dataset_id', 'id'])

    op.create_table('datasets',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('owner_org', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('entity_field', sa.String(length=63), nullable=False),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('latest_version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_org'], ['orgs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner_org', 'name')
    )
    op.create_index(op.f('ix_datasets_owner_org'), 'datasets', ['owner_org'])

    op.create_table('dataset_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.String(length=36), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('location', sa.String(length=512), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dataset_id', 'version')
    )
    op.create_index(op.f('ix_dataset_versions_dataset_id'), 'dataset_versions', ['dataset_id'])

    op.create_table('slices',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('dataset_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('predicate', sa.JSON(), nullable=False),
    sa.Column('consent', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dataset_id', 'name')
    )
    op.create_index(op.f('ix_slices_dataset_id'), 'slices', ['dataset_id'])

    op.create_table('contracts',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('dataset_id', sa.String(length=36), nullable=False),
    sa.Column('provider_org', sa.String(length=64), nullable=False),
    sa.Column('consumer_org', sa.String(length=64), nullable=False),
    sa.Column('purposes', sa.JSON(), nullable=False),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('k_min', sa.Integer(), nullable=False),
    sa.Column('dominance_n', sa.Integer(), nullable=False),
    sa.Column('dominance_k', sa.Float(), nullable=False),
    sa.Column('dominance_p', sa.Float(), nullable=False),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('valid_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('max_queries_per_day', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('suspended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dataset_version', sa.Integer(), nullable=True),
    sa.Column('slice_id', sa.String(length=36), nullable=True),
    sa.Column('result_retention_days', sa.Integer(), nullable=False),
    sa.Column('linkable', sa.Boolean(), nullable=False),
    sa.Column('provider_signature', sa.String(length=128), nullable=True),
    sa.Column('consumer_signature', sa.String(length=128), nullable=True),
    sa.ForeignKeyConstraint(['consumer_org'], ['orgs.id'], ),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ),
    sa.ForeignKeyConstraint(['provider_org'], ['orgs.id'], ),
    sa.ForeignKeyConstraint(['slice_id'], ['slices.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_contracts_consumer_org'), 'contracts', ['consumer_org'])
    op.create_index(op.f('ix_contracts_dataset_id'), 'contracts', ['dataset_id'])
    op.create_index(op.f('ix_contracts_provider_org'), 'contracts', ['provider_org'])

    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    for ddl in POSTGRESQL_TRIGGERS if postgresql else SQLITE_TRIGGERS:
        bind.exec_driver_sql(ddl)
    bind.execute(sa.text("INSERT INTO audit_head (id, size, head_hash, frontier) "
                         "VALUES (1, 0, :genesis, '')"), {"genesis": GENESIS_HASH})


def downgrade() -> None:
    """There is no way back: the audit log only moves forward (restore a backup instead)."""
    raise NotImplementedError("the audit log only moves forward: restore a backup instead")
