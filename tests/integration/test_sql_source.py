"""SQL sources on a real SQLite file and a real PostgreSQL server: the same data as the CSV, read
only ever, table names that stay names, and refusals that name no value and no password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Double,
    Engine,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    inspect,
    select,
    table,
    text,
)

import connectors.sql
from broker.domain.datasets import DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.errors import BadDataset, InvalidInput, Unavailable
from connectors.sql import check_query, read_sql
from tests.postgres import DATABASES, empty_database
from tests.unit.test_connectors import (
    ENTITY,
    SAMPLE,
    SCHEMA,
    SECRETS,
    assert_quotes_nothing,
    expected,
    issues,
    python_rows,
)

TABLE = "企业"
#: The declared columns in order, as SQL (written out: a test's SQL is never formatted).
#: The same query three ways: a trailing ';', comments first and a ';' in a string, a WITH.
QUERIES = (
    'SELECT "统一社会信用代码", "镇", "企业名称", "员工", "用电量", "成立日期", "高新" '
    'FROM "企业";',
    '-- the sample\n/* all rows */ select "统一社会信用代码", "镇", "企业名称", "员工", "用电量", '
    '"成立日期", "高新" FROM "企业" WHERE "镇" <> \';\'',
    'WITH t AS (SELECT * FROM "企业") SELECT "统一社会信用代码", "镇", "企业名称", "员工", '
    '"用电量", "成立日期", "高新" FROM t -- ; DROP TABLE t',
    # Text the driver or SQLAlchemy could take for parameters: ':name', '%s', '%(x)s', '?'.
    'SELECT "统一社会信用代码", "镇", "企业名称", "员工", "用电量", "成立日期", "高新" '
    'FROM "企业" WHERE \'a :b %s %(x)s ?\' <> "镇" AND "员工" IS NOT NULL OR "员工" IS NULL',
)



def _create(engine: Engine, name: str = TABLE, *, note: bool = True) -> Table:
    """The sample as a typed table (and an undeclared column the snapshot must not read)."""
    table = Table(
        name, MetaData(),
        Column(ENTITY, String(18)), Column("镇", String), Column("企业名称", String),
        Column("员工", BigInteger), Column("用电量", Double), Column("成立日期", Date),
        Column("高新", Boolean), *([Column("内部备注", String)] if note else []),
    )
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [
            {**dict(zip(SAMPLE.columns, row, strict=True)),
             **({"内部备注": "机密XYZ"} if note else {})}
            for row in python_rows(SAMPLE)
        ])
    return table


@pytest.fixture(params=DATABASES)
def source(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database holding the sample as the table 企业; its URL."""
    url = empty_database(request, tmp_path / "source.db")
    engine = create_engine(url)
    try:
        _create(engine)
    finally:
        engine.dispose()
    return url


def is_postgres(url: str) -> bool:
    """Whether ``url`` is the PostgreSQL source."""
    return url.startswith("postgresql")


def snapshot(url: str) -> tuple[Any, ...]:
    """Every table's name and rows, to show that nothing changed."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = sorted(inspect(conn).get_table_names())
            rows = [sorted(map(repr, conn.execute(select(text("*")).select_from(table(n)))))
                    for n in names]
            return tuple(names), tuple(map(tuple, rows))
    finally:
        engine.dispose()


def refused(url: str, schema: DatasetSchema = SCHEMA, **what: Any) -> BadDataset:
    """The BadDataset ``read_sql`` raises, checked to quote no value."""
    with pytest.raises(BadDataset) as caught:
        read_sql(url, schema, **what)
    assert_quotes_nothing(caught.value)
    return caught.value


# --- the same data as the CSV ----------------------------------------------------------------


def test_a_table_and_a_query_give_the_csv_frame(source: str, tmp_path: Path) -> None:
    reference = expected(tmp_path)
    owner = "public" if is_postgres(source) else "main"
    pd.testing.assert_frame_equal(read_sql(source, SCHEMA, table=TABLE), reference)
    pd.testing.assert_frame_equal(read_sql(source, SCHEMA, table=f"{owner}.{TABLE}"), reference)
    for query in QUERIES:
        pd.testing.assert_frame_equal(read_sql(source, SCHEMA, query=query), reference)


def test_a_snapshot_reads_only_declared_columns_and_a_query_must_match(source: str) -> None:
    # The table's undeclared column stays in the source; a query that selects it is refused.
    error = refused(source, query='SELECT * FROM "企业"')
    assert error.extensions["problems"] == [{"column": None, "position": 8,
                                             "issue": "undeclared"}]


def test_postgres_numeric_and_timestamp_columns_read_like_the_csv(postgres_url: str,
                                                                  tmp_path: Path) -> None:
    engine = create_engine(postgres_url)
    _create(engine)
    engine.dispose()
    cast = ('SELECT "统一社会信用代码", "镇", "企业名称", "员工"::numeric(20, 2) AS "员工", '
            '"用电量"::numeric AS "用电量", "成立日期"::timestamp AS "成立日期", "高新" '
            'FROM "企业"')
    frame = read_sql(postgres_url, SCHEMA, query=cast)
    pd.testing.assert_frame_equal(frame, expected(tmp_path))
    timed = ('SELECT "统一社会信用代码", "镇", "企业名称", "员工", "用电量", '
             '"成立日期" + time \'13:30\' AS "成立日期", "高新" FROM "企业"')
    error = refused(postgres_url, query=timed)
    assert issues(error) == {"not-date"}


# --- names stay names; writes never happen ---------------------------------------------------


@pytest.mark.parametrize("name", [
    '企业"; DROP TABLE "企业"; --',
    "企业; DROP TABLE 企业",
    '" OR 1=1 --',
    "企业 WHERE 1=0",
    'main.企业"; DELETE FROM "企业',
    "pg_catalog.pg_authid",
    ".",
    "",
])
def test_table_names_are_looked_up_never_run(source: str, name: str) -> None:
    before = snapshot(source)
    error = refused(source, table=name)
    assert issues(error) in ({"table-missing"}, {"header-missing"})
    assert snapshot(source) == before


def test_a_table_named_like_an_injection_is_just_a_table(source: str, tmp_path: Path) -> None:
    name = 'x"; DROP TABLE "企业"; --'
    engine = create_engine(source)
    _create(engine, name, note=False)
    engine.dispose()
    pd.testing.assert_frame_equal(read_sql(source, SCHEMA, table=name), expected(tmp_path))
    assert TABLE in snapshot(source)[0]


WRITES = [
    ('DELETE FROM "企业"', "not-a-select"),
    ('/* a comment */ INSERT INTO "企业" ("镇") VALUES (\'x\')', "not-a-select"),
    ('DROP TABLE "企业"', "not-a-select"),
    ('SELECT 1; DELETE FROM "企业"', "several-statements"),
    ('SELECT \';\'; DROP TABLE "企业"; --', "several-statements"),
    ('SELECT 1 /* ; */; UPDATE "企业" SET "镇" = NULL', "several-statements"),
    ('SELECT \'unterminated; DELETE FROM "企业"', "malformed-query"),
    ('WITH x AS (SELECT 1) DELETE FROM "企业"', "write-refused"),
    ('WITH x AS (SELECT 1) INSERT INTO "企业" ("镇") SELECT \'x\' FROM x', "write-refused"),
    ('WITH x AS (SELECT 1) UPDATE "企业" SET "镇" = NULL', "write-refused"),
]
POSTGRES_WRITES = [
    ('WITH d AS (DELETE FROM "企业" RETURNING *) SELECT * FROM d', "write-refused"),
    ('SELECT * INTO stolen FROM "企业"', "write-refused"),
    ("SELECT nextval('counter') AS n", "write-refused"),
    ("SELECT sneaky() AS n", "write-refused"),
    ('WITH x AS (SELECT 1) SELECT $q$;$q$ AS a; TRUNCATE "企业"', "several-statements"),
]
#: What PostgreSQL itself answers to a write in a server-side cursor (the rows are streamed
#: through one): DECLARE CURSOR takes only a plain SELECT (0A000, 42601), before the read-only
#: transaction is even asked.
CURSOR_REFUSALS = ({"issue": "query-failed", "sqlstate": "0A000"},
                   {"issue": "query-failed", "sqlstate": "42601"})


@pytest.mark.parametrize(("query", "issue"), WRITES)
def test_writes_in_a_query_are_refused_and_change_nothing(source: str, query: str,
                                                          issue: str) -> None:
    before = snapshot(source)
    [found] = refused(source, query=query).extensions["problems"]
    if is_postgres(source) and issue == "write-refused":
        assert {k: found[k] for k in ("issue", "sqlstate")} in CURSOR_REFUSALS
    else:
        assert found["issue"] == issue
    assert snapshot(source) == before


@pytest.mark.parametrize(("query", "issue"), POSTGRES_WRITES)
def test_postgres_writes_are_refused_by_the_read_only_transaction(postgres_url: str, query: str,
                                                                  issue: str) -> None:
    engine = create_engine(postgres_url)
    _create(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE SEQUENCE counter"))
        conn.execute(text("""CREATE FUNCTION sneaky() RETURNS bigint LANGUAGE sql AS
                             $$ DELETE FROM "企业" RETURNING 1 $$"""))
    engine.dispose()
    before = snapshot(postgres_url)
    [found] = refused(postgres_url, query=query).extensions["problems"]
    if "nextval" in query or "sneaky" in query:
        assert found == {"column": None, "issue": issue, "sqlstate": "25006"}
    elif issue == "write-refused":
        assert {k: found[k] for k in ("issue", "sqlstate")} in CURSOR_REFUSALS
    else:
        assert found["issue"] == issue
    assert snapshot(postgres_url) == before


def test_a_read_write_url_still_opens_sqlite_read_only(tmp_path: Path) -> None:
    path = tmp_path / "rw.db"
    engine = create_engine(f"sqlite:///{path}")
    _create(engine)
    engine.dispose()
    url = f"sqlite:///{path}?mode=rwc&uri=true"
    before = snapshot(url)
    error = refused(url, query='WITH x AS (SELECT 1) DELETE FROM "企业"')
    assert issues(error) == {"write-refused"}
    assert snapshot(url) == before


def test_postgres_reads_in_a_read_only_transaction_with_a_timeout(postgres_url: str) -> None:
    schema = DatasetSchema.of("flag", [FieldSpec("flag", FieldType.STRING, FieldRole.ENTITY),
                                       FieldSpec("timeout", FieldType.STRING,
                                                 FieldRole.DIMENSION)])
    frame = read_sql(postgres_url, schema, query="SELECT current_setting('transaction_read_only')"
                     " AS flag, current_setting('statement_timeout') AS timeout")
    assert frame.to_dict("records") == [{"flag": "on", "timeout": "5min"}]


def test_a_query_past_the_time_limit_is_stopped(source: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connectors.sql, "STATEMENT_TIMEOUT_S", 1)
    query = ("SELECT pg_sleep(30)::text AS x" if is_postgres(source) else
             "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
             "SELECT max(x) AS x FROM c")
    schema = DatasetSchema.of("x", [FieldSpec("x", FieldType.STRING, FieldRole.ENTITY)])
    assert issues(refused(source, schema, query=query)) == {"query-timeout"}


# --- limits and failures ---------------------------------------------------------------------


def test_more_rows_than_allowed_are_refused(source: str) -> None:
    error = refused(source, table=TABLE, max_rows=len(SAMPLE) - 1)
    assert issues(error) == {"too-many-rows"}
    assert len(read_sql(source, SCHEMA, table=TABLE, max_rows=len(SAMPLE))) == len(SAMPLE)


def test_values_that_are_not_tabular_data_are_refused_by_row(source: str) -> None:
    engine = create_engine(source)
    blobs = Table("blobs", MetaData(), Column(ENTITY, String), Column("镇", LargeBinary))
    blobs.create(engine)
    with engine.begin() as conn:
        conn.execute(blobs.insert(), [{ENTITY: "E1", "镇": None},
                                      {ENTITY: "E2", "镇": "绝密镇".encode()}])
    engine.dispose()
    schema = DatasetSchema.of(ENTITY, SCHEMA.fields[:2])
    error = refused(source, schema, table="blobs")
    assert error.extensions["problems"] == [
        {"column": "镇", "issue": "unsupported-value", "rows": [2], "count": 1}]


def test_bad_and_unreachable_sources_name_no_password(tmp_path: Path) -> None:
    password = "pw-" + SECRETS[0]
    for url in (f"postgresql://reader:{password}@127.0.0.1:1/db",
                f"postgresql+psycopg://reader:{password}@127.0.0.1:1/db?sslmode=disable"):
        with pytest.raises(Unavailable) as unreachable:
            read_sql(url, SCHEMA, table=TABLE)
        assert password not in f"{unreachable.value}{unreachable.value.extensions}"
        assert unreachable.value.__cause__ is None
    with pytest.raises(Unavailable):
        read_sql(f"sqlite:///{tmp_path / 'absent.db'}", SCHEMA, table=TABLE)
    assert not (tmp_path / "absent.db").exists()
    for url in (f"mysql://reader:{password}@db/x", "not a url", "sqlite://",
                "sqlite:///:memory:"):
        with pytest.raises(InvalidInput) as invalid:
            read_sql(url, SCHEMA, table=TABLE)
        assert password not in str(invalid.value)


def test_exactly_one_of_table_and_query(source: str) -> None:
    with pytest.raises(InvalidInput):
        read_sql(source, SCHEMA)
    with pytest.raises(InvalidInput):
        read_sql(source, SCHEMA, table=TABLE, query='SELECT * FROM "企业"')


def test_one_statement_is_kept_whole_and_a_final_semicolon_dropped() -> None:
    assert check_query("SELECT 1") == "SELECT 1"
    assert check_query("select ';' AS a;  -- done\n") == "select ';' AS a"
    assert check_query('WITH "a;b" AS (SELECT 1) SELECT * FROM "a;b"') == (
        'WITH "a;b" AS (SELECT 1) SELECT * FROM "a;b"')
    assert check_query("SELECT $$ ; $$ AS a") == "SELECT $$ ; $$ AS a"
    for query in ("SELECTX 1", "(SELECT 1)", "EXPLAIN ANALYZE SELECT 1", "VALUES (1)",
                  "SELECT 1;;", "SELECT /* unterminated"):
        with pytest.raises(BadDataset):
            check_query(query)
