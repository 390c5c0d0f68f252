"""``broker demo``: the whole story on embedded defaults, printed as a report."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from broker.cli.token import minter
from broker.demo.report import render
from broker.demo.story import Broker, StoryError, run_story
from broker.settings import Settings


def demo(
    data_dir: Annotated[Path | None, typer.Option(help="Keep the broker's state here")] = None,
) -> None:
    """Run the whole story on embedded defaults and print it as a report."""
    from broker.app import create_app
    from broker.cli.serving import serve_in_thread

    console = Console(width=None if sys.stdout.isatty() else 140)
    workdir = Path(tempfile.mkdtemp(prefix="broker-demo-"))
    # frequent checkpoints, so that the tampering shown at the end is pinned to a few entries;
    # embedded tokens even where BROKER_OIDC_ISSUER is set: the story mints its own actors'
    settings = Settings(data_dir=data_dir or workdir, checkpoint_every_seconds=0.2,
                        oidc_issuer=None)
    try:
        with serve_in_thread(create_app(settings)) as base, httpx.Client(
            base_url=base, timeout=120
        ) as client:
            result = run_story(Broker(client, minter(settings)))
        render(result, console)
        _tamper_demo(settings, workdir, console)
    except StoryError as exc:
        console.print(f"[bold red]The story failed:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        if data_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if not result.verify.get("valid"):
        raise typer.Exit(1)


def _tamper_demo(settings: Settings, workdir: Path, console: Console) -> None:
    """Show what a database insider's edits look like to ``broker audit verify``: each is
    made on a copy of the demo database and found with the published key and the checkpoint
    copies kept outside the database."""
    from sqlalchemy import Connection, create_engine

    from broker.cli.audit_offline import verify_database
    from broker.demo import tamper
    from broker.services.checkpoints import DirectorySink
    from broker.store.keys import checkpoint_signer

    db = settings.data_dir / "broker.db"
    if settings.database_url is not None or not db.exists():
        return
    verifier = checkpoint_signer(settings).verifier
    outside = DirectorySink(settings.checkpoints_path).notes()
    victim = 5
    attacks: list[tuple[str, Callable[[Connection], None]]] = [
        ("changes one byte of entry 5", lambda c: tamper.flip_byte(c, victim)),
        ("deletes entry 5", lambda c: tamper.delete_entry(c, victim)),
        ("swaps entries 5 and 6", lambda c: tamper.swap_entries(c, victim, victim + 1)),
        ("cuts the last 3 entries, moves the head back and deletes its checkpoints",
         lambda c: tamper.truncate(c, _size(c) - 3)),
        ("rewrites entry 5 and recomputes every hash, node and the head",
         lambda c: tamper.rewrite(c, victim)),
    ]
    console.print("9. A database administrator tampers with copies of the audit tables; "
                  "broker audit verify says:")
    for number, (what, attack) in enumerate(attacks):
        copy = workdir / f"tampered-{number}.db"
        with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        engine = create_engine(f"sqlite:///{copy}")
        with engine.begin() as conn:
            tamper.disarm(conn)
            attack(conn)
        engine.dispose()
        result = verify_database(f"sqlite:///{copy}", verifier, outside=outside)
        console.print(f"   - {what}: [bold]{result.fault}[/] at entry {result.first_bad_seq} "
                      f"(exit {result.exit_code}): {result.detail}")


def _size(conn: Any) -> int:
    from sqlalchemy import text

    return int(conn.execute(text("SELECT size FROM audit_head")).scalar_one())
