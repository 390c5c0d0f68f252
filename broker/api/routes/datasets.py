"""Datasets: upload and catalogue."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import ValidationError

from broker.api.deps import ContainerDep, ContextDep, DatasetServiceDep
from broker.api.routes.common import AUTHENTICATED, problems
from broker.api.schemas import DatasetMetaIn, DatasetOut
from broker.domain.errors import InvalidInput, PayloadTooLarge

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=AUTHENTICATED)

FORMATS = {".csv": "csv"}


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


@router.post("", status_code=201, responses=problems(409, 413))
def register_dataset(
    file: Annotated[UploadFile, File(description="CSV with a header row")],
    meta: Annotated[str, Form(description="JSON: name, entity_field, fields")],
    ctx: ContextDep,
    datasets: DatasetServiceDep,
    container: ContainerDep,
) -> DatasetOut:
    """Register a dataset: the file is checked against the declared schema, then stored."""
    parsed = _parse_meta(meta)
    suffix = Path(file.filename or "").suffix.lower()
    file_format = FORMATS.get(suffix)
    if file_format is None:
        raise InvalidInput("Upload a file named *.csv.")
    settings = container.settings
    path = _spool(file, settings.uploads_dir, settings.max_upload_bytes)
    try:
        dataset = datasets.register(
            ctx,
            name=parsed.name,
            entity_field=parsed.entity_field,
            fields=[f.to_domain() for f in parsed.fields],
            file=path,
            file_format=file_format,
        )
    finally:
        path.unlink(missing_ok=True)
    return DatasetOut.from_domain(datasets.get(ctx, dataset.id))


@router.get("")
def list_datasets(ctx: ContextDep, datasets: DatasetServiceDep) -> list[DatasetOut]:
    """The catalogue as the caller may see it: metadata only."""
    return [DatasetOut.from_domain(v) for v in datasets.list(ctx)]


@router.get("/{dataset_id}", responses=problems(404))
def get_dataset(dataset_id: UUID, ctx: ContextDep, datasets: DatasetServiceDep) -> DatasetOut:
    """One catalogue entry."""
    return DatasetOut.from_domain(datasets.get(ctx, str(dataset_id)))


