"""Streaming multipart uploads for the API: the request's body handed, as it arrives, to the
shared receiver (:mod:`broker.services.uploads`), which spools the ``file`` part to a private
scratch file under the size limit and removes it on every way out but success."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from broker.domain.errors import InvalidInput
from broker.services.uploads import Upload, UploadRules, multipart_boundary, receive_multipart

T = TypeVar("T")


@overload
async def receive_upload(
    request: Request, rules: UploadRules, *, parse_meta: Callable[[bytes], T]
) -> Upload[T]: ...


@overload
async def receive_upload(
    request: Request, rules: UploadRules, *, parse_meta: None = None
) -> Upload[None]: ...


async def receive_upload(
    request: Request, rules: UploadRules, *, parse_meta: Callable[[bytes], object] | None = None
) -> Upload[Any]:
    """Stream the request's ``multipart/form-data`` body: its ``file`` part as ``rules``
    allow and, with ``parse_meta``, its ``meta`` part (see ``receive_multipart``).

    Raises 415 for another content type, 413 as soon as a part or the body is over its limit
    and 422 for a malformed or incomplete body, a missing, repeated or unknown part, or a
    client that went away; the scratch file is gone in every such case.
    """
    boundary = multipart_boundary(request.headers.get("content-type"))
    if boundary is None:
        raise HTTPException(415, "Send the upload as multipart/form-data.")
    try:
        return await receive_multipart(request.stream(), boundary,
                                       request.headers.get("content-length"), rules,
                                       parse_meta=parse_meta)
    except ClientDisconnect as exc:
        raise InvalidInput("The client went away before the upload was complete.") from exc
