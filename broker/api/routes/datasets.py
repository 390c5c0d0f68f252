"""Datasets: upload or import from SQL, new versions, and the catalogue."""

from __future__ import annotations

from functools import partial
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from broker.api.deps import ContextDep, DatasetServiceDep, UploadRulesDep
from broker.api.problems import PROBLEM_JSON, ProblemOut
from broker.api.routes.common import AUTHENTICATED, problems
from broker.api.schemas.datasets import (
    DatasetImportIn,
    DatasetOut,
    VersionImportIn,
    VersionOut,
)
from broker.api.uploads import receive_upload
from broker.services.datasets import FileData
from broker.services.provider_inputs import parse_dataset_meta
from broker.services.uploads import META_LIMIT

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=AUTHENTICATED)

FILE_PART = {
    "type": "string",
    "format": "binary",
    "description": (
        "The data, in the format its file name's suffix names: `.csv` (UTF-8, a header row), "
        "`.xlsx` (the first worksheet, a header row) or `.parquet` (flat columns). Another "
        "suffix is refused with a 422 problem whose `formats` lists those this broker reads. "
        "The file is streamed to disk and counted: the first byte over the configured limit "
        "ends the upload with 413."
    ),
}
META_PART = {
    "type": "string",
    "description": (
        f"JSON (at most {META_LIMIT} bytes): `name`, `entity_field`, "
        "`fields` [{`name`, `type`, `role`, `sensitivity`, ...}]"
    ),
}
UNSUPPORTED_MEDIA_TYPE: dict[int | str, dict[str, Any]] = {
    415: {"model": ProblemOut, "description": "The body is not multipart/form-data",
          "content": {PROBLEM_JSON: {}}},
}


def _multipart(parts: dict[str, dict[str, str]]) -> dict[str, Any]:
    """OpenAPI for a multipart/form-data body with exactly these parts."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": list(parts), "properties": parts,
        "additionalProperties": False,
    }}}}}


@router.post("", status_code=201, responses={**problems(409, 413), **UNSUPPORTED_MEDIA_TYPE},
             openapi_extra=_multipart({"file": FILE_PART, "meta": META_PART}))
async def register_dataset(
    request: Request, ctx: ContextDep, datasets: DatasetServiceDep, rules: UploadRulesDep
) -> DatasetOut:
    """Register a dataset: the file is checked against the declared schema, then stored.

    The caller is authorised before a byte of the body is read, so no one without the right
    can make the broker spool an upload; the body is then streamed, never held whole.
    """
    await run_in_threadpool(datasets.authorize_register, ctx)
    upload = await receive_upload(request, rules, parse_meta=parse_dataset_meta)
    with upload:
        meta = upload.meta
        view = await run_in_threadpool(
            partial(datasets.register, ctx, name=meta.name, entity_field=meta.entity_field,
                    fields=[f.to_domain() for f in meta.fields],
                    data=FileData(upload.path, upload.file_format))
        )
    return DatasetOut.from_domain(view)


@router.post("/import", status_code=201, responses=problems(404, 409))
def import_dataset(body: DatasetImportIn, ctx: ContextDep, datasets: DatasetServiceDep
                   ) -> DatasetOut:
    """Register a dataset from a snapshot of a table or a query in a configured SQL source."""
    view = datasets.register(ctx, name=body.name, entity_field=body.entity_field,
                             fields=[f.to_domain() for f in body.fields],
                             data=body.source.to_domain())
    return DatasetOut.from_domain(view)


@router.get("")
def list_datasets(ctx: ContextDep, datasets: DatasetServiceDep) -> list[DatasetOut]:
    """The catalogue as the caller may see it: metadata only."""
    return [DatasetOut.from_domain(v) for v in datasets.list(ctx)]


@router.get("/{dataset_id}", responses=problems(404))
def get_dataset(dataset_id: UUID, ctx: ContextDep, datasets: DatasetServiceDep) -> DatasetOut:
    """One catalogue entry."""
    return DatasetOut.from_domain(datasets.get(ctx, str(dataset_id)))


@router.post("/{dataset_id}/versions", status_code=201,
             responses={**problems(404, 409, 413), **UNSUPPORTED_MEDIA_TYPE},
             openapi_extra=_multipart({"file": FILE_PART}))
async def add_version(
    dataset_id: UUID,
    request: Request,
    ctx: ContextDep,
    datasets: DatasetServiceDep,
    rules: UploadRulesDep,
) -> DatasetOut:
    """Store a new version of one of your datasets: a file with the same declared schema.

    Only the dataset's owner gets to send a body: anyone else is refused (audited) before a
    byte of it is read.
    """
    await run_in_threadpool(datasets.authorize_version, ctx, str(dataset_id))
    upload = await receive_upload(request, rules)
    with upload:
        view = await run_in_threadpool(datasets.add_version, ctx, str(dataset_id),
                                       FileData(upload.path, upload.file_format))
    return DatasetOut.from_domain(view)


@router.post("/{dataset_id}/versions/import", status_code=201, responses=problems(404, 409))
def import_version(
    dataset_id: UUID, body: VersionImportIn, ctx: ContextDep, datasets: DatasetServiceDep
) -> DatasetOut:
    """Store a new version of one of your datasets from a snapshot of a SQL source."""
    view = datasets.add_version(ctx, str(dataset_id), body.source.to_domain())
    return DatasetOut.from_domain(view)


@router.get("/{dataset_id}/versions", responses=problems(404))
def list_versions(
    dataset_id: UUID, ctx: ContextDep, datasets: DatasetServiceDep
) -> list[VersionOut]:
    """The stored versions of a dataset: number, rows, content hash and time, never data."""
    return [VersionOut.from_domain(v) for v in datasets.versions(ctx, str(dataset_id))]
