"""Datasets: upload and catalogue."""

from __future__ import annotations

import uuid
from functools import partial
from pathlib import Path
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from broker.api.deps import ContainerDep, ContextDep, DatasetServiceDep
from broker.api.routes.common import AUTHENTICATED, problems
from broker.api.schemas import DatasetMetaIn, DatasetOut
from broker.domain.errors import InvalidInput, PayloadTooLarge

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=AUTHENTICATED)

def _parse_meta(meta: str) -> DatasetMetaIn:
    try:
        return DatasetMetaIn.model_validate_json(meta)
    except ValidationError as exc:
        issues = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
                  for e in exc.errors()]
        raise InvalidInput("The 'meta' part does not match the dataset schema.",
                           errors=issues) from exc


def _spool(upload: UploadFile, directory: Path, limit: int) -> Path:
    """Copy the upload to a private scratch file, refusing more than ``limit`` bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{uuid.uuid4().hex}.upload"
    copied = 0
    try:
        with open(target, "wb") as out:
            while block := upload.file.read(1 << 20):
                copied += len(block)
                if copied > limit:
                    raise PayloadTooLarge(f"The file is larger than {limit} bytes.")
                out.write(block)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file", "meta"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "CSV with a header row"},
                "meta": {"type": "string",
                         "description": "JSON: name, entity_field, fields [{name, type, role, "
                                        "sensitivity}]"},
            },
        }}},
    }
}


@router.post("", status_code=201, responses=problems(409, 413), openapi_extra=UPLOAD_SCHEMA)
async def register_dataset(
    request: Request, ctx: ContextDep, datasets: DatasetServiceDep, container: ContainerDep
) -> DatasetOut:
    """Register a dataset: the file is checked against the declared schema, then stored.

    The caller is authorised before a byte of the body is read, so no one without the right
    can make the broker spool an upload.
    """
    await run_in_threadpool(datasets.authorize_register, ctx)
    async with request.form(max_files=1, max_fields=1) as form:
        upload, meta = form.get("file"), form.get("meta")
        if not isinstance(upload, UploadFile) or not isinstance(meta, str):
            raise InvalidInput("Send multipart/form-data with a 'file' part and a 'meta' part.")
        parsed = _parse_meta(meta)
        file_format = Path(upload.filename or "").suffix.lower().lstrip(".")
        if file_format not in datasets.formats():
            raise InvalidInput(f"Upload a file named *.{' or *.'.join(datasets.formats())}.")
        settings = container.settings
        path = await run_in_threadpool(_spool, upload, settings.uploads_dir,
                                       settings.max_upload_bytes)
    try:
        view = await run_in_threadpool(
            partial(datasets.register, ctx, name=parsed.name, entity_field=parsed.entity_field,
                    fields=[f.to_domain() for f in parsed.fields], file=path,
                    file_format=file_format)
        )
    finally:
        path.unlink(missing_ok=True)
    return DatasetOut.from_domain(view)


@router.get("")
def list_datasets(ctx: ContextDep, datasets: DatasetServiceDep) -> list[DatasetOut]:
    """The catalogue as the caller may see it: metadata only."""
    return [DatasetOut.from_domain(v) for v in datasets.list(ctx)]


@router.get("/{dataset_id}", responses=problems(404))
def get_dataset(dataset_id: UUID, ctx: ContextDep, datasets: DatasetServiceDep) -> DatasetOut:
    """One catalogue entry."""
    return DatasetOut.from_domain(datasets.get(ctx, str(dataset_id)))


