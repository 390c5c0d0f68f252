"""``broker db ...``: the database schema's version (Alembic migrations)."""

from __future__ import annotations

import time

import typer
from pydantic import ValidationError
from rich.console import Console

from broker.settings import Settings

db_app = typer.Typer(help="The database's schema: see where it stands, upgrade it.",
                     no_args_is_help=True)

EXIT_MISMATCH = 3  # status: the database is not at the code's revision
EXIT_REFUSED = 4  # upgrade: the database is not one any migration starts from


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(f"error: {error['msg']}", err=True)
        raise typer.Exit(2) from exc


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations the configured database lacks, in one transaction.

    Back the database up first (``broker backup``). Safe to run while other brokers start (on
    PostgreSQL they wait for it) and safe to run again: a database at the code's revision is
    left as it is. Exit 4 when the database is not one any migration starts from.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from broker.store.db import flush, make_engine
    from broker.store.schema import SchemaMismatch, upgrade

    settings = _settings()
    console = Console(stderr=True)
    engine = make_engine(settings.db_url)
    started = time.perf_counter()
    try:
        before, after = upgrade(engine)
        flush(engine)
    except SchemaMismatch as exc:
        console.print(f"[red]error[/]: {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_REFUSED) from exc
    except SQLAlchemyError as exc:  # a database it cannot write or reach: nothing applied
        cause = getattr(exc, "orig", None) or exc  # the driver's words, not the statement's
        console.print(f"[red]error[/]: the upgrade failed and nothing was applied: "
                      f"{type(cause).__name__}: {str(cause).splitlines()[0][:200]}",
                      soft_wrap=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    seconds = time.perf_counter() - started
    if before == after:
        typer.echo(f"{where}: at revision {after}, nothing to do")
    else:
        typer.echo(f"{where}: {before or 'release 0.1.0 (unversioned)'} -> {after} "
                   f"in {seconds:.2f} s")


@db_app.command("status")
def db_status() -> None:
    """Print the database's revision and the code's; exit 3 unless they are the same."""
    from broker.store.db import make_engine
    from broker.store.schema import state

    settings = _settings()
    engine = make_engine(settings.db_url)
    try:
        found = state(engine)
    finally:
        engine.dispose()
    current = found.current or ("empty" if found.empty else "unversioned (release 0.1.0?)")
    typer.echo(f"database: {current}\ncode:     {found.head}")
    if not found.at_head:
        raise typer.Exit(EXIT_MISMATCH)
