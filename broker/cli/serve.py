"""``broker serve``: the HTTP API, optionally with the demo county loaded."""

from __future__ import annotations

import logging.config
import os
import tempfile
import threading
import time
from typing import Annotated

import httpx
import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console

from broker.cli.token import minter
from broker.demo.story import ACTORS, Broker, set_up
from broker.observability.logs import logging_config
from broker.settings import Settings

EXIT_BAD_SETTINGS = 2
EXIT_SCHEMA = 3  # the database is not at the code's schema revision


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    demo: Annotated[bool, typer.Option(help="Load the demo county into an empty broker")] = False,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="Worker processes (more than one needs PostgreSQL)")] = 1,
) -> None:
    """Run the broker's HTTP API.

    Exit 2 on bad settings, 3 when the database is behind (or ahead of) the code: run
    ``broker db upgrade`` first. An empty database is given the schema.
    """
    try:
        settings = Settings()
    except ValidationError as exc:  # refused at start, said plainly (not a traceback)
        for error in exc.errors():
            typer.echo(f"error: {error['msg']}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from exc
    if demo and settings.oidc_issuer:
        raise typer.BadParameter("the demo mints dev tokens, which are refused while "
                                 "BROKER_OIDC_ISSUER is set", param_hint="--demo")
    if workers > 1 and not settings.db_url.startswith("postgresql"):
        raise typer.BadParameter(
            "several workers share one database: set BROKER_DATABASE_URL to PostgreSQL "
            "(the embedded SQLite database serves one process)", param_hint="--workers")
    # JSON lines unless BROKER_LOG_FORMAT=text; configured before anything logs (each worker
    # process applies the same document, handed to uvicorn)
    log_config = logging_config(settings.log_format or "json", settings.log_level)
    logging.config.dictConfig(log_config)
    _prepare_schema(settings)
    if demo:
        threading.Thread(target=_welcome, args=(settings, host, port), daemon=True).start()
    if workers == 1:
        from broker.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level,
                    log_config=log_config)
        return
    # Each worker builds its own app from the same environment (settings were checked
    # above); the metrics of all of them are collected in one directory.
    with tempfile.TemporaryDirectory(prefix="broker-metrics-") as metrics:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics)
        uvicorn.run("broker.app:create_app", factory=True, workers=workers, host=host,
                    port=port, log_level=settings.log_level, log_config=log_config)


def _prepare_schema(settings: Settings) -> None:
    """Give an empty database the schema once, before any worker starts; refuse (exit 3) a
    database that is not at the code's revision, naming the command that upgrades it."""
    from broker.store.db import create_schema, make_engine
    from broker.store.schema import SchemaMismatch

    engine = make_engine(settings.db_url)
    try:
        create_schema(engine)
    except SchemaMismatch as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_SCHEMA) from exc
    finally:
        engine.dispose()


def _welcome(settings: Settings, host: str, port: int) -> None:
    """Once the server answers: load the demo county if empty, then print how to use it."""
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
    console = Console()
    with httpx.Client(base_url=base, timeout=120) as client:
        for _ in range(600):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        broker = Broker(client, minter(settings, ttl=12 * 3600))
        if not broker.call("operator", "GET", "/v1/orgs", expect=200).json():
            console.print("[bold]Loading the demo county...[/]")
            set_up(broker)
        contracts = broker.call("econ", "GET", "/v1/contracts", expect=200).json()
    contract = next((c["id"] for c in contracts if c["status"] == "active"), "<contract-id>")
    console.rule("[bold]Broker ready")
    console.print(f"Web console: {base}/console/  (中文; English: {base}/console/?lang=en)")
    console.print(f"API docs: {base}/docs    health: {base}/healthz")
    for name, (_sub, org, roles) in ACTORS.items():
        console.print(f"[bold]{name}[/] ({', '.join(roles)} at {org}):")
        console.print(f"  export TOKEN_{name.upper()}={broker.tokens[name]}", soft_wrap=True)
    console.print("Try:")
    console.print(f"  curl -s -H \"Authorization: Bearer $TOKEN_ECON\" {base}/v1/datasets",
                  soft_wrap=True)
    console.print(
        f"  curl -s -H \"Authorization: Bearer $TOKEN_ECON\" -H 'Content-Type: application/json'"
        f" {base}/v1/queries/aggregate -d '{{\"contract_id\": \"{contract}\", \"purpose\":"
        f" \"energy-planning\", \"group_by\": [\"town\"], \"measures\": [{{\"fn\": \"count\"}},"
        f" {{\"fn\": \"sum\", \"field\": \"electricity_kwh\"}}]}}'", soft_wrap=True)
    console.print(f"  curl -s -H \"Authorization: Bearer $TOKEN_AUDITOR\" {base}/v1/audit/verify",
                  soft_wrap=True)
