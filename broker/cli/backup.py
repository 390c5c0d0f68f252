"""``broker backup DIR`` and ``broker restore DIR``: a consistent copy of a running broker,
and its restore on a fresh machine (see ``broker.store.backup``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from broker.settings import Settings

#: Exit codes of both commands: 0 done (and, for a restore, the audit log verified).
EXIT_FAILED = 1  # could not be done (unreadable backup, a tool or the database failed)
EXIT_REFUSED = 10  # a target in use, or keys placed inside the backup: nothing written
EXIT_MISMATCH = 11  # a file differs from the manifest: nothing restored
EXIT_NO_KEY = 12  # the master key that opens the data is not at hand: nothing restored
EXIT_AUDIT_MISMATCH = 13  # the restored log is valid but not the one the backup recorded

KeysOption = Annotated[Path | None, typer.Option(
    "--keys", file_okay=False,
    help="Where the secrets are copied to (backup) or read from (restore): master key, "
         "checkpoint signing key, JWT secret, pseudonym secret, custodial org keys. Never "
         "inside DIR.")]


def backup(
    directory: Annotated[Path, typer.Argument(
        metavar="DIR", file_okay=False, help="A new or empty directory for the backup")],
    keys: KeysOption = None,
) -> None:
    """Copy the database, the sealed dataset files it references, their wrapped keys and the
    signed checkpoints to DIR, while the broker runs.

    Secrets are copied only with --keys, to a directory outside DIR (mode 0600). DIR gets a
    manifest.json listing every file with its size and SHA-256, the audit log's size and root
    at the snapshot; it appears only when whole. Exit 0 done, 1 failed, 10 refused (DIR or
    KEYDIR not empty, KEYDIR inside DIR or around it).
    """
    from broker.store.backup import BackupError, BackupRefused, make_backup

    console = Console(soft_wrap=True)
    settings = Settings()
    try:
        manifest = make_backup(settings, directory, keys)
    except BackupRefused as exc:
        raise _fail(console, f"{exc}; nothing was written", EXIT_REFUSED) from exc
    except (BackupError, OSError) as exc:
        raise _fail(console, f"{exc}; nothing was kept", EXIT_FAILED) from exc
    size = sum(f.size for f in manifest.files)
    console.print(f"backup of the {manifest.database} database written to {directory}: "
                  f"{len(manifest.files)} files, {size} bytes; audit log of "
                  f"{manifest.audit_size} entries, root {manifest.audit_root}")
    if keys is not None:
        console.print(f"secrets written to {keys} (mode 0600): keep them apart from the backup")
    else:
        console.print("[yellow]no secrets copied: restoring needs this broker's master key "
                      f"({settings.master_key_path}) to read the data; pass --keys KEYDIR "
                      "to copy it elsewhere[/]")


def restore(
    directory: Annotated[Path, typer.Argument(
        metavar="DIR", exists=True, file_okay=False, help="A backup made by broker backup")],
    keys: KeysOption = None,
    without_key: Annotated[bool, typer.Option(
        "--without-key", help="Restore even though the master key is not at hand (the "
        "datasets stay unreadable until it is put in place)")] = False,
) -> None:
    """Restore a backup into an empty data directory and an empty database, then verify the
    restored audit log against the backup's checkpoints.

    Every file is checked against the manifest before anything is written. Without --keys the
    master key must already be at its configured place (BROKER_MASTER_KEY_FILE), else the
    restore is refused: the sealed data cannot be read without it (--without-key overrides).
    Exit 0 restored and verified, 1 failed, 10 refused (data directory, database or a key
    file's place not empty; another kind of database), 11 a file differs from the manifest,
    12 no master key; 3-8 as broker audit verify when the restored log does not verify, 13
    when it verifies but is not the log the backup recorded (in both cases the restore is
    undone: files removed, the database emptied, so no broker starts on it).
    """
    from broker.store.backup import (
        BackupError,
        BackupMismatch,
        BackupRefused,
        KeyMissing,
        Manifest,
        restore_backup,
    )

    console = Console(soft_wrap=True)
    settings = Settings()
    def verified(manifest: Manifest) -> None:  # before the restore counts as done
        _verify(settings, manifest.audit_size, manifest.audit_root, console)

    try:
        restored = restore_backup(settings, directory, keys, without_key=without_key,
                                  check=verified)
    except BackupMismatch as exc:
        raise _fail(console, f"the backup does not match its manifest: {exc}; nothing was "
                    "restored", EXIT_MISMATCH) from exc
    except BackupRefused as exc:
        raise _fail(console, str(exc), EXIT_REFUSED) from exc
    except KeyMissing as exc:
        raise _fail(console, f"{exc}; nothing was restored", EXIT_NO_KEY) from exc
    except (BackupError, OSError) as exc:
        raise _fail(console, f"{exc}; nothing was restored", EXIT_FAILED) from exc
    manifest = restored.manifest
    console.print(f"restored the {manifest.database} backup of {manifest.created} "
                  f"({len(manifest.files)} files) into {settings.data_dir}")
    if not restored.key_available:
        console.print("[yellow]warning: the master key is not in place; the sealed datasets "
                      f"cannot be read until it is at {settings.master_key_path}[/]")


def _verify(settings: Settings, size: int, root: str, console: Console) -> None:
    """Verify the restored log against the restored checkpoints with the restored public
    key, and compare it with the manifest's size and root."""
    from audit.checkpoint import CheckpointError, NoteVerifier
    from broker.cli.audit_offline import verify_database
    from broker.services.checkpoints import DirectorySink

    pubkey = settings.checkpoint_key_path.with_suffix(".pub")
    try:
        verifier = NoteVerifier.from_text(pubkey.read_text(encoding="utf-8"),
                                          settings.audit_origin)
        result = verify_database(settings.db_url, verifier,
                                 outside=DirectorySink(settings.checkpoints_path).notes())
    except (OSError, CheckpointError) as exc:
        raise _fail(console, f"the restored audit log could not be verified: {exc}; the "
                    "restore was undone", EXIT_FAILED) from exc
    if not result.valid:
        where = f" at entry {result.first_bad_seq}" if result.first_bad_seq else ""
        raise _fail(console, f"the restored audit log is BROKEN: {result.fault}{where} "
                    f"({result.reason}); the restore was undone", result.exit_code)
    if (result.size, result.root) != (size, root):
        raise _fail(console, f"the restored audit log ({result.size} entries, root "
                    f"{result.root}) is not the one the backup recorded ({size} entries, "
                    f"root {root}); the restore was undone", EXIT_AUDIT_MISMATCH)
    console.print(f"audit log verified: {result.size} entries, root {result.root}, as the "
                  f"backup recorded; {result.checkpoints} signed checkpoint(s) matched")


def _fail(console: Console, message: str, code: int) -> typer.Exit:
    console.print(f"[red]error[/]: {message}")
    return typer.Exit(code)
