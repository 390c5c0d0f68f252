"""Streaming multipart uploads: the file part goes straight to a private scratch file.

Shared by the API and the console (each hands over the request's body as it arrives, and
answers a body that is not ``multipart/form-data`` with 415 itself), so an upload through
either is limited, spooled and cleaned up the same way.

Starlette's ``request.form()`` spools the whole body into its own temporary files before a
route sees it, so a 2 GB upload would be received and written before any size check ran. Here
the body is parsed as it arrives, with python-multipart's streaming ``MultipartParser``: the
``file`` part is written block by block to a 0600 scratch file under the uploads directory and
counted, and the first byte over the limit ends the request with a 413 problem without reading
further. Every way out but success (over a limit, a malformed body, a missing, repeated or
unknown part, a client that went away, cancellation) removes the scratch file.

Only ``multipart/form-data`` with one ``file`` part and, where the route asks for it, one
``meta`` part (and the small text parts a route names in ``extra``, such as a console form's
CSRF token) is accepted; anything else is refused before a byte of it reaches the disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from anyio import to_thread
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from broker.domain.errors import InvalidInput, PayloadTooLarge

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

#: The most a ``meta`` part may hold: a schema of up to 200 fields with their code lists.
META_LIMIT = 1024 * 1024
#: Room for the boundaries and part headers around the parts.
FRAMING_LIMIT = 64 * 1024
#: How far a multipart body may exceed the file limit; ``BodyLimitMiddleware`` allows the same.
MULTIPART_OVERHEAD = META_LIMIT + FRAMING_LIMIT
#: File data is handed to a worker thread in blocks of about this size.
WRITE_BLOCK = 1024 * 1024
#: The most an ``extra`` text part may hold.
EXTRA_LIMIT = 4096

T = TypeVar("T")


@dataclass(slots=True)
class Upload(Generic[T]):
    """A received upload: the file at ``path`` (removed when the ``with`` block ends), its
    format (the file name's suffix) and the parsed ``meta`` part (``None`` when not asked)."""

    path: Path
    file_format: str
    meta: T
    #: The ``extra`` text parts received, by name.
    extra: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> Upload[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class UploadRules:
    """What an upload's ``file`` part may be, and where it is spooled: at most ``limit``
    bytes, named ``*.<format>`` for one of ``formats``, into a scratch file under
    ``directory``."""

    directory: Path
    limit: int
    formats: Collection[str]


def _too_large(what: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The {what} is larger than {limit} bytes.")


class _Receiver:
    """The parser's callbacks: which part is open, the scratch file, the ``meta`` bytes."""

    def __init__(self, rules: UploadRules, parse_meta: Callable[[bytes], object] | None,
                 extra: Collection[str] = ()) -> None:
        self.directory = rules.directory
        self.limit = rules.limit
        self.formats = sorted(rules.formats)
        self.parse_meta = parse_meta
        self.expected = (
            "one 'file' part and one 'meta' part" if parse_meta else "one 'file' part"
        )
        self.headers: dict[bytes, bytes] = {}
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.current: Literal["file", "meta", "extra"] | None = None
        self.path: Path | None = None
        self.out: IO[bytes] | None = None
        self.file_format = ""
        self.file_bytes = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.meta_seen = False
        self.meta_bytes = bytearray()
        self.meta: object = None
        self.ended = False
        self.extra_names = frozenset(extra)
        self.extra: dict[str, bytearray] = {}
        self.extra_name = ""

    def callbacks(self) -> MultipartCallbacks:
        """The callbacks to give ``MultipartParser``."""
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        """A new part: forget the last one's headers."""
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        """More of a header's name."""
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        """More of a header's value."""
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        """One header complete."""
        self.headers[bytes(self.header_field).strip().lower()] = bytes(self.header_value).strip()
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        """Decide what the part is before any of its data arrives."""
        disposition, options = parse_options_header(self.headers.get(b"content-disposition"))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise InvalidInput("Each part needs 'Content-Disposition: form-data' with a name.")
        encoding = self.headers.get(b"content-transfer-encoding", b"binary").lower()
        if encoding not in (b"binary", b"7bit", b"8bit"):
            raise InvalidInput("Send parts as binary, without a Content-Transfer-Encoding.")
        if name == b"file":
            if self.path is not None:
                raise InvalidInput(f"Send {self.expected}; there are two 'file' parts.")
            filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self.file_format = Path(filename).suffix.lower().lstrip(".")
            if self.file_format not in self.formats:
                raise InvalidInput(
                    "Upload a file named *." + " or *.".join(self.formats) + ".",
                    formats=self.formats,
                )
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, name_ = tempfile.mkstemp(suffix=".upload", dir=self.directory)  # mode 0600
            self.path = Path(name_)
            self.out = os.fdopen(fd, "wb")
            self.current = "file"
        elif name == b"meta" and self.parse_meta is not None:
            if self.meta_seen:
                raise InvalidInput(f"Send {self.expected}; there are two 'meta' parts.")
            self.meta_seen = True
            self.current = "meta"
        elif name.decode("utf-8", "replace") in self.extra_names:
            self.extra_name = name.decode("utf-8")
            if self.extra_name in self.extra:
                raise InvalidInput(f"Send {self.expected}; there are two parts of one name.")
            self.extra[self.extra_name] = bytearray()
            self.current = "extra"
        else:
            # The part's name is not echoed: it is the client's text, not ours.
            raise InvalidInput(f"Send {self.expected}; there is a part of another name.")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        """Count the part's bytes; refuse the first one over its limit."""
        size = end - start
        if self.current == "file":
            self.file_bytes += size
            if self.file_bytes > self.limit:
                raise _too_large("file", self.limit)
            self.pending.append(data[start:end])
            self.pending_bytes += size
        elif self.current == "meta":
            if len(self.meta_bytes) + size > META_LIMIT:
                raise _too_large("'meta' part", META_LIMIT)
            self.meta_bytes += data[start:end]
        elif self.current == "extra":
            held = self.extra[self.extra_name]
            if len(held) + size > EXTRA_LIMIT:
                raise _too_large("form field", EXTRA_LIMIT)
            held += data[start:end]

    def on_part_end(self) -> None:
        """A part is complete: ``meta`` is checked at once, before the rest of the body."""
        if self.current == "meta" and self.parse_meta is not None:
            self.meta = self.parse_meta(bytes(self.meta_bytes))
            self.meta_bytes.clear()
        self.current = None

    def on_end(self) -> None:
        """The closing boundary."""
        self.ended = True

    def flush(self) -> None:
        """Write the file data received so far (in a worker thread: it blocks)."""
        assert self.out is not None  # noqa: S101 - only file parts queue data
        self.out.write(b"".join(self.pending))
        self.pending.clear()
        self.pending_bytes = 0

    def close(self) -> None:
        """Write what is left and close the scratch file (in a worker thread)."""
        if self.pending:
            self.flush()
        if self.out is not None:
            self.out.close()

    def discard(self) -> None:
        """Close and remove the scratch file, whatever state it is in."""
        self.pending.clear()
        if self.out is not None:
            self.out.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def multipart_boundary(content_type: str | None) -> bytes | None:
    """The boundary of a ``multipart/form-data`` body; None for another content type (the
    entry point answers that with 415)."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        return None
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidInput("The multipart/form-data Content-Type has no boundary.")
    return boundary


@overload
async def receive_multipart(
    body: AsyncIterable[bytes], boundary: bytes, content_length: str | None,
    rules: UploadRules, *, parse_meta: Callable[[bytes], T], extra: Collection[str] = ...,
) -> Upload[T]: ...


@overload
async def receive_multipart(
    body: AsyncIterable[bytes], boundary: bytes, content_length: str | None,
    rules: UploadRules, *, parse_meta: None = None, extra: Collection[str] = ...,
) -> Upload[None]: ...


async def receive_multipart(
    body: AsyncIterable[bytes], boundary: bytes, content_length: str | None,
    rules: UploadRules, *, parse_meta: Callable[[bytes], object] | None = None,
    extra: Collection[str] = (),
) -> Upload[Any]:
    """Stream a ``multipart/form-data`` body (``body``, as it arrives): its ``file`` part as
    ``rules`` allow (at most ``rules.limit`` bytes, named ``*.<format>`` for one of
    ``rules.formats``) to a scratch file under ``rules.directory``; with ``parse_meta``, its
    ``meta`` part (at most ``META_LIMIT`` bytes) through that parser; the text parts named in
    ``extra`` (at most ``EXTRA_LIMIT`` bytes each) as they are.

    Raises 413 as soon as a part or the body is over its limit (at once when
    ``content_length`` says so) and 422 for a malformed or incomplete body or a missing,
    repeated or unknown part; the scratch file is gone in every such case, and in any other
    way out but success (the client going away, cancellation).
    """
    body_limit = rules.limit + (MULTIPART_OVERHEAD if parse_meta else FRAMING_LIMIT)
    length = content_length or ""
    if length.isdigit() and int(length) > body_limit:
        raise _too_large("request body", body_limit)
    receiver = _Receiver(rules, parse_meta, extra)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
    except FormParserError as exc:
        raise InvalidInput("The multipart boundary is too long.") from exc
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > body_limit:  # e.g. an epilogue after the closing boundary
                raise _too_large("request body", body_limit)
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise InvalidInput("The multipart/form-data body is malformed.") from exc
            if receiver.pending_bytes >= WRITE_BLOCK:
                await to_thread.run_sync(receiver.flush)
        if not receiver.ended:
            raise InvalidInput("The multipart/form-data body ends before its closing boundary.")
        if receiver.path is None or (parse_meta is not None and not receiver.meta_seen):
            raise InvalidInput(f"Send {receiver.expected}.")
        await to_thread.run_sync(receiver.close)
    except BaseException:
        receiver.discard()
        raise
    return Upload(receiver.path, receiver.file_format, receiver.meta,
                  {name: bytes(value).decode("utf-8", "replace")
                   for name, value in receiver.extra.items()})
