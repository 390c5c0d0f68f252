"""``broker audit ...``: verify, export, prove, check proofs, sign checkpoints, show the key.

Everything here works without a running server: on a database URL, on an export file, or on a
proof document, given the log's public key.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from audit.checkpoint import CheckpointError, NoteVerifier
from audit.verify import Verification
from broker.settings import Settings

if TYPE_CHECKING:
    from audit.proofs import ConsistencyProof, InclusionProof

audit_app = typer.Typer(help="Verify, export and prove the audit log.", no_args_is_help=True)

#: ``broker audit verify``: 0 valid, 1 could not read or no key, then one code per fault.
EXIT_UNREADABLE = 1
EXIT_PROOF_FAILS = 3

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: the settings')")]
PubkeyOption = Annotated[Path | None, typer.Option(
    "--pubkey", exists=True, dir_okay=False,
    help="The log's public key: a verifier key string (GET /v1/audit/key 'vkey') or PEM")]
OriginOption = Annotated[str | None, typer.Option(
    help="The log origin (key name), needed with a PEM key (default: the settings')")]
CheckpointSizeOption = Annotated[int | None, typer.Option(
    min=1, help="A checkpoint's size (default: latest)")]


def _fail(console: Console, message: str, code: int = EXIT_UNREADABLE) -> typer.Exit:
    console.print(f"[red]error[/]: {message}")
    return typer.Exit(code)


def _verifier(pubkey: Path | None, origin: str | None, console: Console) -> NoteVerifier:
    """The key to check signatures with: the one given, else this broker's own (said so)."""
    settings = Settings()
    if pubkey is None:
        local = settings.checkpoint_key_path.with_suffix(".pub")
        if not local.exists():
            raise _fail(console, "no public key: pass --pubkey (GET /v1/audit/key gives it)")
        console.print(f"[yellow]using this broker's own key {local}; an auditor passes the "
                      "published key with --pubkey[/]")
        pubkey = local
    try:
        return NoteVerifier.from_text(pubkey.read_text(encoding="utf-8"),
                                      origin or settings.audit_origin)
    except CheckpointError as exc:
        raise _fail(console, f"{pubkey}: {exc}") from exc


def _notes_in(directory: Path) -> list[tuple[str, str]]:
    from broker.services.checkpoints import DirectorySink

    return DirectorySink(directory).notes()


def _report(result: Verification, console: Console, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result.as_json()) + "\n")
    elif result.valid:
        console.print(f"valid: {result.size} entries, root {result.root}; "
                      f"{result.checkpoints} signed checkpoint(s) matched"
                      + (f", latest of size {result.latest_checkpoint}"
                         if result.latest_checkpoint else ""))
    else:
        where = f" at entry {result.first_bad_seq}" if result.first_bad_seq else ""
        console.print(f"[red]BROKEN: {result.fault}{where}[/] ({result.reason}): {result.detail}")
        console.print(f"  {result.size} entries verified before it")
    if not result.valid:
        raise typer.Exit(result.exit_code)


@audit_app.command("verify")
def audit_verify(
    db: DbOption = None,
    export: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="An export file instead of a database")] = None,
    pubkey: PubkeyOption = None,
    origin: OriginOption = None,
    trusted: Annotated[list[Path] | None, typer.Option(
        exists=True, dir_okay=False,
        help="A signed checkpoint you already trust (repeatable); the log must extend it")] = None,
    checkpoints: Annotated[Path | None, typer.Option(
        file_okay=False,
        help="Directory of checkpoint copies kept outside the database (default for the "
             "settings' database: the configured one)")] = None,
    deep: Annotated[bool, typer.Option(
        help="Also re-encode every entry as RFC 8785 and check its shape (slower)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Recompute every leaf, the chain and the root at every signed checkpoint.

    Exit 0 if valid; otherwise 3 bad entry, 4 gap, 5 reorder, 6 rollback (truncation), 7 fork
    (rewrite), 8 bad checkpoint; 1 if the input or key could not be read.
    """
    from audit.verify import export_chunks, export_notes, verify_with_notes
    from broker.cli.audit_offline import verify_database

    console = Console(stderr=as_json, soft_wrap=True)
    verifier = _verifier(pubkey, origin, console)
    settings = Settings()
    trusted_notes = [(p.read_text(encoding="utf-8"), f"trusted {p}") for p in trusted or []]
    directory = checkpoints
    if directory is None and export is None and db is None:
        directory = settings.checkpoints_path
    outside = _notes_in(directory) if directory else []
    try:
        if export is not None:
            with open(export, "rb") as fh:
                notes = [*trusted_notes, *outside, *export_notes(fh)]
            with open(export, "rb") as fh:
                result = verify_with_notes(export_chunks(fh), notes, verifier, deep=deep)
        else:
            result = verify_database(db or settings.db_url, verifier, outside=outside,
                                     trusted=trusted_notes, deep=deep)
    except (OSError, CheckpointError) as exc:
        raise _fail(console, str(exc)) from exc
    _report(result, console, as_json)


@audit_app.command("export")
def audit_export(
    db: DbOption = None,
    output: Annotated[Path | None, typer.Option(help="File to write (default: stdout)")] = None,
) -> None:
    """Write the log for offline verification: a header line, every signed checkpoint as
    ``{"checkpoint": note}``, then every entry's canonical JSON, one per line."""
    from broker.cli.audit_offline import export_database

    settings = Settings()
    local = settings.checkpoint_key_path.with_suffix(".pub")
    vkey = ""
    if local.exists():
        vkey = NoteVerifier.from_text(local.read_text(encoding="utf-8"), settings.audit_origin).vkey
    out = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    try:
        for line in export_database(db or settings.db_url, settings.audit_origin, vkey):
            out.write(line + b"\n")
    finally:
        if output:
            out.close()


def _print_proof(prove: Callable[[str], InclusionProof | ConsistencyProof], db: str | None,
                 *, ensure_ascii: bool) -> None:
    """Print the proof ``prove`` builds from the database as indented JSON; exit 1 if it
    cannot (no such entry or checkpoint)."""
    try:
        document = prove(db or Settings().db_url)
    except (LookupError, ValueError) as exc:
        raise _fail(Console(stderr=True), str(exc)) from exc
    sys.stdout.write(json.dumps(document.as_json(), ensure_ascii=ensure_ascii, indent=1) + "\n")


@audit_app.command("proof")
def audit_proof(
    seq: Annotated[int, typer.Argument(min=1, help="The entry (a receipt's seq)")],
    db: DbOption = None,
    size: CheckpointSizeOption = None,
) -> None:
    """Print the inclusion proof of one entry against a signed checkpoint, as JSON."""
    from broker.cli.audit_offline import database_inclusion

    _print_proof(lambda url: database_inclusion(url, seq, size), db, ensure_ascii=False)


@audit_app.command("consistency")
def audit_consistency(
    old: Annotated[int, typer.Argument(min=1, help="The size of the tree you already trust")],
    db: DbOption = None,
    new: CheckpointSizeOption = None,
) -> None:
    """Print the consistency proof from ``old`` entries to a signed checkpoint, as JSON."""
    from broker.cli.audit_offline import database_consistency

    _print_proof(lambda url: database_consistency(url, old, new), db, ensure_ascii=True)


@audit_app.command("check")
def audit_check(
    document: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                             help="A proof document (API or broker audit proof)")],
    pubkey: Annotated[Path, typer.Option(
        "--pubkey", exists=True, dir_okay=False,
        help="The log's published public key (vkey string or PEM)")],
    origin: OriginOption = None,
    receipt: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="A receipt ({seq, leaf_hash} from a query answer) the proof must be about")] = None,
    trusted: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="The signed checkpoint you trust; a consistency proof must start from it")] = None,
) -> None:
    """Check a proof offline: the checkpoint's signature, then the inclusion or consistency
    proof against it. Exit 0 if it holds, 3 if it does not, 1 if unreadable."""
    from audit.proofs import ProofError, check_document

    console = Console(soft_wrap=True)
    try:
        verifier = NoteVerifier.from_text(pubkey.read_text(encoding="utf-8"),
                                          origin or Settings().audit_origin)
        doc = json.loads(document.read_text(encoding="utf-8"))
        wanted = json.loads(receipt.read_text(encoding="utf-8")) if receipt else None
        if isinstance(wanted, dict) and isinstance(wanted.get("receipt"), dict):
            wanted = wanted["receipt"]  # a whole query answer
        base = verifier.checkpoint(trusted.read_text(encoding="utf-8")) if trusted else None
    except (OSError, ValueError) as exc:
        raise _fail(console, str(exc)) from exc
    if not isinstance(doc, dict) or (wanted is not None and not isinstance(wanted, dict)):
        raise _fail(console, "the document and receipt must be JSON objects")
    try:
        checked = check_document(doc, verifier, receipt=wanted, trusted=base)
    except ProofError as exc:
        console.print(f"[red]DOES NOT HOLD[/]: {exc}")
        raise typer.Exit(EXIT_PROOF_FAILS) from exc
    console.print(f"holds: {checked.summary}")


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign a checkpoint of the log now (the server also does every N entries or T seconds)."""
    from broker.domain.errors import Unavailable
    from broker.domain.ports import utc_now
    from broker.services.checkpoints import Checkpointer, make_sinks
    from broker.store.db import create_schema, make_engine
    from broker.store.keys import checkpoint_signer
    from broker.store.uow import SqlUnitOfWorkFactory

    settings = Settings()
    engine = make_engine(settings.db_url)
    try:
        create_schema(engine)
        checkpointer = Checkpointer(
            SqlUnitOfWorkFactory(engine, utc_now), checkpoint_signer(settings),
            make_sinks(settings.checkpoint_sinks, settings.checkpoints_path),
            every_entries=settings.checkpoint_every_entries,
            every_seconds=settings.checkpoint_every_seconds)
        stored = checkpointer.checkpoint()
    except Unavailable as exc:
        raise _fail(Console(stderr=True), str(exc)) from exc
    finally:
        engine.dispose()
    if stored is None:
        Console().print("the log is empty: nothing to sign")
        return
    sys.stdout.write(stored.note)


@audit_app.command("key")
def audit_key(
    pem: Annotated[bool, typer.Option(help="Print the PEM public key instead")] = False,
) -> None:
    """Print the public key that signs checkpoints (the verifier key string by default)."""
    from broker.store.keys import checkpoint_signer

    verifier = checkpoint_signer(Settings()).verifier
    sys.stdout.write(verifier.pem if pem else verifier.vkey + "\n")
