"""The ``broker`` command: serve, demo, token, audit."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from rich.console import Console

from broker.auth import mint_token
from broker.cli_audit import audit_app
from broker.cli_contracts import contracts_app
from broker.cli_datasets import datasets_app
from broker.cli_keys import keys_app
from broker.demo.report import render
from broker.demo.story import ACTORS, Broker, Mint, StoryError, run_story, set_up
from broker.keys import jwt_secret
from broker.settings import Settings

app = typer.Typer(help="Privacy-preserving data-sharing broker.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(audit_app, name="audit")
app.add_typer(contracts_app, name="contracts")
app.add_typer(datasets_app, name="datasets")
app.add_typer(keys_app, name="keys")
policy_app = typer.Typer(help="Test and package the Rego policies.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

def _minter(settings: Settings, ttl: int = 3600) -> Mint:
    secret = jwt_secret(settings)

    def mint(sub: str, org: str, roles: list[str]) -> str:
        return mint_token(key=secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                          sub=sub, org=org, roles=roles, ttl=ttl)

    return mint


@app.command()
def token(
    sub: Annotated[str, typer.Option(help="Subject (user) the token names")],
    org: Annotated[str, typer.Option(help="Organisation id")],
    role: Annotated[list[str], typer.Option(help="provider|consumer|auditor|admin; repeatable")],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds", min=1, max=7 * 86400)] = 3600,
) -> None:
    """Mint a dev token (HS256, the broker's secret) and print it alone on stdout."""
    settings = Settings()
    try:
        value = _minter(settings, ttl)(sub, org, role)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    print(value)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    demo: Annotated[bool, typer.Option(help="Load the demo county into an empty broker")] = False,
) -> None:
    """Run the broker's HTTP API."""
    from broker.app import create_app

    settings = Settings()
    if demo:
        threading.Thread(target=_welcome, args=(settings, host, port), daemon=True).start()
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


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
        broker = Broker(client, _minter(settings, ttl=12 * 3600))
        if not broker.call("operator", "GET", "/v1/orgs", expect=200).json():
            console.print("[bold]Loading the demo county...[/]")
            set_up(broker)
        contracts = broker.call("econ", "GET", "/v1/contracts", expect=200).json()
    contract = next((c["id"] for c in contracts if c["status"] == "active"), "<contract-id>")
    console.rule("[bold]Broker ready")
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


@app.command()
def demo(
    data_dir: Annotated[Path | None, typer.Option(help="Keep the broker's state here")] = None,
) -> None:
    """Run the whole story on embedded defaults and print it as a report."""
    from broker.app import create_app
    from broker.serving import serve_in_thread

    console = Console(width=None if sys.stdout.isatty() else 140)
    workdir = Path(tempfile.mkdtemp(prefix="broker-demo-"))
    # frequent checkpoints, so that the tampering shown at the end is pinned to a few entries
    settings = Settings(data_dir=data_dir or workdir, checkpoint_every_seconds=0.2)
    try:
        with serve_in_thread(create_app(settings)) as base, httpx.Client(
            base_url=base, timeout=120
        ) as client:
            result = run_story(Broker(client, _minter(settings)))
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

    from broker.audit_offline import verify_database
    from broker.checkpoints import DirectorySink
    from broker.demo import tamper
    from broker.keys import checkpoint_signer

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


@policy_app.command("test")
def policy_test(
    opa_url: Annotated[str | None, typer.Option(
        help="Also check a running OPA server (it must hold these policies)")] = None,
) -> None:
    """Run the Rego unit tests (*_test.rego) on the OPA Go engine, then every decision case
    (policies/cases) on every engine: regopy, the OPA Go engine and, with --opa-url, an OPA
    server. Exit 1 on a failing test, a wrong decision or any disagreement between engines."""
    from broker.domain.ports import PolicyEngine
    from broker.policy.cases import load_cases
    from broker.policy.conformance import check_all
    from broker.policy.embedded import EmbeddedPolicyEngine
    from broker.policy.golib import GoEngineMissing, GoPolicyEngine, run_rego_tests
    from broker.policy.opa import OpaServerPolicyEngine

    policy_dir = Settings().policy_dir
    console = Console()
    try:
        report = run_rego_tests(policy_dir)
        engines: list[PolicyEngine] = [EmbeddedPolicyEngine(policy_dir), GoPolicyEngine(policy_dir)]
    except GoEngineMissing as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from exc
    if not report.tests:
        console.print("[red]error[/]: no test_* rules in any *_test.rego")
        raise typer.Exit(1)
    for test in report.failed:
        detail = f": {test.error}" if test.error else ""
        console.print(f"[red]FAIL[/] {test.module}: {test.name}{detail}")
    passed = len(report.tests) - len(report.failed)
    console.print(f"Rego unit tests (OPA Go engine): {passed} passed, {len(report.failed)} failed")
    for module, percent in report.coverage.items():
        console.print(f"  coverage {module}: {percent:.1f}%")
    if opa_url:
        engines.append(OpaServerPolicyEngine(opa_url, policy_dir))
    outcomes = check_all(engines, load_cases(policy_dir))
    bad = [o for o in outcomes if not o.ok]
    for o in bad:
        console.print(f"[red]FAIL[/] {o.case.file}: {o.case.name}")
        for name, wrong in o.wrong.items():
            console.print(f"    {name} got {wrong}")
        for name, error in o.errors.items():
            console.print(f"    {name} failed: {error}")
        if o.disagreement:
            console.print("    engines disagree:")
            for name, text in o.disagreement.items():
                console.print(f"      {name}: {text}", soft_wrap=True)
    names = ", ".join(str(getattr(e, "name", "?")) for e in engines)
    console.print(f"decision cases on {names}: {len(outcomes) - len(bad)} passed, "
                  f"{len(bad)} failed")
    console.print(f"policy revision {engines[0].revision}")
    if bad or report.failed:
        raise typer.Exit(1)


@policy_app.command("bundle")
def policy_bundle(
    output: Annotated[Path, typer.Option(help="Bundle file to write")] = Path(
        "broker-policies.tar.gz"),
) -> None:
    """Write the policies and their data as an OPA bundle (.tar.gz with .manifest)."""
    from broker.policy.bundle_file import write_bundle

    revision = write_bundle(Settings().policy_dir, output)
    Console().print(f"wrote {output} (revision {revision})")


def main() -> None:
    """Entry point of the ``broker`` script."""
    app()


if __name__ == "__main__":
    main()
    sys.exit(0)
