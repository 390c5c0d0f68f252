"""The ``broker`` command: one module per command group."""

from __future__ import annotations

import typer

from broker.cli.audit import audit_app
from broker.cli.backup import backup, restore
from broker.cli.contracts import contracts_app
from broker.cli.datasets import datasets_app
from broker.cli.db import db_app
from broker.cli.demo import demo
from broker.cli.keys import keys_app
from broker.cli.policy import policy_app
from broker.cli.serve import serve
from broker.cli.token import token

app = typer.Typer(help="Privacy-preserving data-sharing broker.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.command()(token)
app.command()(serve)
app.command()(demo)
app.command()(backup)
app.command()(restore)
app.add_typer(audit_app, name="audit")
app.add_typer(contracts_app, name="contracts")
app.add_typer(datasets_app, name="datasets")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(policy_app, name="policy")


def main() -> None:
    """Entry point of the ``broker`` script."""
    app()
