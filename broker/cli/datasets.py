"""``broker datasets import``: bring a file or a SQL snapshot into a running broker over HTTP.

A file is streamed as ``multipart/form-data`` in blocks (never read whole into memory), with a
progress bar of the bytes sent on a terminal; a SQL snapshot is asked for with a small JSON
body and taken by the broker itself from a source its operator configured. The broker's answer
(``id``, ``version``, ``rows``, ``sha256``, ...) is printed as JSON on stdout; a refusal prints
the problem's title, detail and itemised problems on stderr.

Exit codes: 0 stored, 1 the broker refused (a problem answer), 2 wrong usage, 3 no answer.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

datasets_app = typer.Typer(help="Bring data into a running broker.", no_args_is_help=True)

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
#: The file is read and sent in blocks of this size.
BLOCK = 256 * 1024
#: Members every problem has; the others are printed as its particulars.
_PROBLEM_MEMBERS = {"type", "title", "status", "detail", "instance", "request_id"}


def _multipart(
    boundary: str, file: Path, meta: bytes | None, sent: Callable[[int], None]
) -> tuple[Iterator[bytes], int]:
    """A ``multipart/form-data`` body (``meta`` first, so the broker can refuse a bad one
    before the file) as blocks read from ``file`` as they are sent, and its length."""
    head = b""
    if meta is not None:
        head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"meta\"\r\n"
                 "Content-Type: application/json\r\n\r\n").encode() + meta + b"\r\n"
    # The HTML form encoding of a file name: quotes and line breaks percent-encoded, UTF-8.
    filename = file.name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
             f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
             ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = file.stat().st_size

    def blocks() -> Iterator[bytes]:
        yield head
        with file.open("rb") as fh:
            while block := fh.read(BLOCK):
                yield block
                sent(len(block))
        yield tail

    return blocks(), len(head) + size + len(tail)


def _report_problem(response: httpx.Response) -> None:
    """The problem's title, detail and particulars, on stderr."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        typer.echo(f"error: HTTP {response.status_code}: {response.text[:500]}", err=True)
        return
    title = body.get("title") or f"HTTP {response.status_code}"
    typer.echo(f"error: {title} ({response.status_code}): {body.get('detail', '')}", err=True)
    for key, value in body.items():
        if key in _PROBLEM_MEMBERS or value is None:
            continue
        if key == "errors" and isinstance(value, list):
            for e in value:
                where = ".".join(str(p) for p in e.get("loc", ())) if isinstance(e, dict) else ""
                msg = e.get("msg") if isinstance(e, dict) else e
                typer.echo(f"  - {where}: {msg}", err=True)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            typer.echo(f"  {key}:", err=True)
            for item in value:
                typer.echo(f"  - {json.dumps(item, ensure_ascii=False)}", err=True)
        else:
            typer.echo(f"  {key}: {json.dumps(value, ensure_ascii=False)}", err=True)
    if body.get("request_id"):
        typer.echo(f"  request id: {body['request_id']}", err=True)


def _answer(response: httpx.Response) -> None:
    """Print a 2xx answer as JSON on stdout; otherwise report the problem and exit 1."""
    if response.is_success:
        typer.echo(json.dumps(response.json(), ensure_ascii=False, indent=2))
        return
    _report_problem(response)
    raise typer.Exit(EXIT_REFUSED)


def _read_meta(meta: Path) -> dict[str, Any]:
    try:
        value = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise typer.BadParameter(f"{meta}: not a JSON file ({exc})", param_hint="--meta") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{meta}: not a JSON object", param_hint="--meta")
    return value


def _upload(
    client: httpx.Client, file: Path, meta: Path | None, dataset: str | None, show: bool
) -> httpx.Response:
    """Stream ``file`` (with ``meta``, or as a new version of ``dataset``)."""
    path = "/v1/datasets" if dataset is None else f"/v1/datasets/{dataset}/versions"
    meta_bytes = meta.read_bytes() if meta is not None else None
    boundary = secrets.token_hex(16)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not show) as progress:
        task = progress.add_task(f"uploading {file.name}", total=file.stat().st_size)

        def sent(size: int) -> None:
            progress.advance(task, size)
            if progress.tasks[0].finished:
                progress.update(task, description=f"{file.name}: the broker is checking it")

        body, length = _multipart(boundary, file, meta_bytes, sent)
        return client.post(path, content=body, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(length),
        })


def _snapshot(
    client: httpx.Client, source: dict[str, str], meta: Path | None, dataset: str | None
) -> httpx.Response:
    """Ask the broker to snapshot ``source`` (as a new dataset with ``meta``, or a version)."""
    if dataset is not None:
        return client.post(f"/v1/datasets/{dataset}/versions/import", json={"source": source})
    assert meta is not None  # noqa: S101 - checked by the caller
    return client.post("/v1/datasets/import", json={**_read_meta(meta), "source": source})


@datasets_app.command("import")
def import_data(
    file: Annotated[Path | None, typer.Argument(
        exists=True, dir_okay=False, readable=True,
        help="The data file; its suffix names the format (.csv, ...)")] = None,
    meta: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, readable=True,
        help="JSON (name, entity_field, fields): register a new dataset")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Add a new version to this dataset of yours (its id) instead")] = None,
    source: Annotated[str | None, typer.Option(
        help="Snapshot from this SQL source of the broker's (BROKER_SQL_SOURCES) instead of "
             "a file")] = None,
    table: Annotated[str | None, typer.Option(help="With --source: the table to snapshot")
                     ] = None,
    query: Annotated[str | None, typer.Option(help="With --source: the query to snapshot")
                     ] = None,
    url: Annotated[str, typer.Option(envvar="BROKER_URL", help="The broker's base URL")
                   ] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(
        envvar="BROKER_TOKEN", show_default=False,
        help="Bearer token of a provider (default: $BROKER_TOKEN)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
    timeout: Annotated[float, typer.Option(
        min=1, help="Seconds to wait for the network and for the broker's check")] = 600.0,
) -> None:
    """Upload FILE, or have the broker snapshot a SQL --source, as a new dataset (--meta) or
    a new version of one (--dataset); print the broker's answer as JSON."""
    if (file is None) == (source is None):
        raise typer.BadParameter("give either FILE or --source")
    if (meta is None) == (dataset is None):
        raise typer.BadParameter("give either --meta (a new dataset) or --dataset (a version)")
    if source is None and (table is not None or query is not None):
        raise typer.BadParameter("--table and --query go with --source")
    if source is not None and (table is None) == (query is None):
        raise typer.BadParameter("with --source, give either --table or --query")
    if dataset is not None:
        try:
            dataset = str(uuid.UUID(dataset))
        except ValueError as exc:
            raise typer.BadParameter("not a dataset id", param_hint="--dataset") from exc
    if not token:
        raise typer.BadParameter("pass --token or set BROKER_TOKEN", param_hint="--token")
    show = not quiet and Console(stderr=True).is_terminal
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    try:
        with httpx.Client(base_url=url, headers=headers,
                          timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))) as client:
            if file is not None:
                response = _upload(client, file, meta, dataset, show)
            else:
                assert source is not None  # noqa: S101 - checked above
                spec = {"name": source, **({"table": table} if table is not None else {}),
                        **({"query": query} if query is not None else {})}
                response = _snapshot(client, spec, meta, dataset)
    except httpx.HTTPError as exc:
        typer.echo(f"error: no answer from the broker at {url}: {type(exc).__name__}: {exc}",
                   err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from exc
    _answer(response)
