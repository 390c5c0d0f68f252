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


def _report(result: Verification, console: Console, as_json: bool, *, tail: bool = False
            ) -> None:
    """Print the verdict; ``tail``: say so when entries follow the last signed checkpoint."""
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
    if result.valid and tail and result.unproven:  # on stderr with --json
        first = result.size - result.unproven + 1
        console.print(f"[yellow]UNPROVEN: {result.unproven} entries ({first}..{result.size}) "
                      "are after the last signed checkpoint; nothing shows whether entries "
                      "after them were cut off[/]")
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
    allow_unsigned_tail: Annotated[bool, typer.Option(
        help="Accept an export whose last entries no signed checkpoint covers (and say how "
             "many are unproven)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Recompute every leaf, the chain and the root at every signed checkpoint.

    Exit 0 if valid; otherwise 3 bad entry, 4 gap, 5 reorder, 6 rollback (truncation), 7 fork
    (rewrite), 8 bad checkpoint, 9 unsigned tail (an export whose last entries no signed
    checkpoint covers, unless --allow-unsigned-tail); 1 if the input or key could not be read.
    """
    from audit.verify import export_chunks, export_notes, require_signed_tail, verify_with_notes
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
            if not allow_unsigned_tail:
                result = require_signed_tail(result)
        else:
            result = verify_database(db or settings.db_url, verifier, outside=outside,
                                     trusted=trusted_notes, deep=deep)
    except (OSError, CheckpointError) as exc:
        raise _fail(console, str(exc)) from exc
    _report(result, console, as_json, tail=export is not None)


@audit_app.command("export")
def audit_export(
    db: DbOption = None,
    output: Annotated[Path | None, typer.Option(help="File to write (default: stdout)")] = None,
    allow_unsigned_tail: Annotated[bool, typer.Option(
        help="Without the signing key, export the entries after the last signed checkpoint "
             "anyway (unproven: verifying needs --allow-unsigned-tail)")] = False,
) -> None:
    """Write the log for offline verification: a header line, every signed checkpoint as
    ``{"checkpoint": note}``, then every entry's canonical JSON, one per line.

    The last checkpoint covers every exported entry: if none covers the log's end, one is
    signed first (with the checkpoint key, copied to the checkpoint sinks like any other);
    entries appended meanwhile are left out. Without the key the export is refused, unless
    ``--allow-unsigned-tail``.
    """
    from broker.cli.audit_offline import Exported, UnsignedTail, export_database
    from broker.domain.errors import Unavailable

    settings = Settings()
    console = Console(stderr=True, soft_wrap=True)
    url = db or settings.db_url
    can_sign = settings.checkpoint_key_path.exists()
    if can_sign:
        try:
            _sign_checkpoint(settings, url, to_stdout=output is None)
        except Unavailable as exc:
            if not allow_unsigned_tail:
                raise _fail(console, f"{exc} The export would end unproven; pass "
                            "--allow-unsigned-tail to write it so anyway") from exc
            console.print(f"[yellow]not signed: {exc}[/]")
            can_sign = False
    local = settings.checkpoint_key_path.with_suffix(".pub")
    vkey = ""
    if local.exists():
        vkey = NoteVerifier.from_text(local.read_text(encoding="utf-8"), settings.audit_origin).vkey
    exported = Exported()
    lines = export_database(url, settings.audit_origin, vkey, into=exported,
                            tail="omit" if can_sign else
                            "include" if allow_unsigned_tail else "refuse")
    try:
        first = next(lines)
    except UnsignedTail as exc:
        raise _fail(console, f"{exc}, and this process cannot sign one: the checkpoint key "
                    f"{settings.checkpoint_key_path} is not here. Run broker audit checkpoint "
                    "where the key is, then export again; or pass --allow-unsigned-tail to "
                    "export them unproven") from exc
    out = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    try:
        out.write(first + b"\n")
        for line in lines:
            out.write(line + b"\n")
    finally:
        if output:
            out.close()
    unproven = exported.size - exported.signed
    if unproven:
        console.print(f"[yellow]exported {exported.size} entries; the last {unproven} "
                      f"({exported.signed + 1}..{exported.size}) are after the last signed "
                      "checkpoint and unproven[/]")
    else:
        console.print(f"exported {exported.size} entries, ending at the signed checkpoint "
                      f"of size {exported.signed}")


def _sign_checkpoint(settings: Settings, url: str, *, to_stdout: bool = False) -> str | None:
    """Sign a checkpoint of the log at ``url`` as the server does (same key, same sinks), unless
    its size is signed already; the note, or None for an empty log. ``to_stdout``: stdout
    carries something else, so a ``stdout`` sink writes to stderr instead. Unavailable if the
    key cannot be read or the log does not extend its signed checkpoints."""
    from broker.domain.errors import Unavailable
    from broker.domain.ports import utc_now
    from broker.services.checkpoints import Checkpointer, StreamSink, make_sinks
    from broker.store.db import create_schema, make_engine
    from broker.store.keys import checkpoint_signer
    from broker.store.uow import SqlUnitOfWorkFactory

    sinks = make_sinks(settings.checkpoint_sinks, settings.checkpoints_path)
    if to_stdout:
        sinks = [StreamSink(sys.stderr) if isinstance(s, StreamSink) else s for s in sinks]
    try:
        signer = checkpoint_signer(settings)
    except (OSError, ValueError) as exc:
        raise Unavailable(f"The checkpoint key {settings.checkpoint_key_path} cannot be used: "
                          f"{exc}.") from exc
    from broker.store.schema import SchemaMismatch

    engine = make_engine(url)
    try:
        try:
            create_schema(engine)
        except SchemaMismatch as exc:  # said as any other reason not to sign
            raise Unavailable(str(exc)) from exc
        checkpointer = Checkpointer(
            SqlUnitOfWorkFactory(engine, utc_now), signer, sinks,
            every_entries=settings.checkpoint_every_entries,
            every_seconds=settings.checkpoint_every_seconds)
        stored = checkpointer.checkpoint()
    finally:
        engine.dispose()
    return None if stored is None else stored.note


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

    settings = Settings()
    try:
        note = _sign_checkpoint(settings, settings.db_url)
    except Unavailable as exc:
        raise _fail(Console(stderr=True), str(exc)) from exc
    if note is None:
        Console().print("the log is empty: nothing to sign")
        return
    sys.stdout.write(note)


@audit_app.command("key")
def audit_key(
    pem: Annotated[bool, typer.Option(help="Print the PEM public key instead")] = False,
) -> None:
    """Print the public key that signs checkpoints (the verifier key string by default)."""
    from broker.store.keys import checkpoint_signer

    verifier = checkpoint_signer(Settings()).verifier
    sys.stdout.write(verifier.pem if pem else verifier.vkey + "\n")
