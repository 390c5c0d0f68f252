"""``broker keys ...``: manage the master key of encryption at rest.

Runs beside a live server: a rotation holds the key directory's lock, which only writers of
new key files wait for, and a server that meets a key file under the new key reads the key
files again, so queries keep being answered throughout.
"""

from __future__ import annotations

from collections.abc import Iterator

import typer
from rich.console import Console

from broker.settings import Settings
from broker.store.keys import release_cache_key_path
from connectors.crypto import KeyFileRef, Keyring, SealError, TextSealer, rotate
from connectors.storage import ParquetStorage

keys_app = typer.Typer(help="Manage the master key of encryption at rest.",
                       no_args_is_help=True)


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Re-wrap every data key under a new master key, then retire the old one.

    The data files are not touched. Safe to interrupt: until it finishes the old and the new
    key (``<master key>.next``) both open everything, and running it again completes it.
    """
    settings = Settings()
    console = Console()
    if not settings.master_key_path.exists():
        console.print(f"[red]error[/]: no master key at {settings.master_key_path}")
        raise typer.Exit(1)
    keyring = Keyring(settings.master_key_path)
    storage = ParquetStorage(settings.datasets_dir, keyring)
    cache_key = release_cache_key_path(settings)

    def key_files() -> Iterator[KeyFileRef]:
        yield from storage.key_files()
        if cache_key.exists():
            yield cache_key, TextSealer.PURPOSE

    resuming = keyring.next_path.exists()
    try:
        result = rotate(keyring, key_files)
    except SealError as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from exc
    if resuming:
        console.print("finished an interrupted rotation")
    console.print(f"master key {result.old_id} -> {result.new_id}: {result.rewrapped} key "
                  f"file(s) re-wrapped, {result.already} already under the new key, "
                  f"{result.total} in all; no data file was touched", soft_wrap=True)
