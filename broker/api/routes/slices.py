"""Consented slices of a dataset: publish and read."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from broker.api.deps import ContextDep, DatasetServiceDep
from broker.api.routes.common import AUTHENTICATED, problems
from broker.api.schemas.datasets import SliceOut
from broker.services.provider_inputs import SliceIn

router = APIRouter(prefix="/v1/datasets/{dataset_id}/slices", tags=["datasets"],
                   responses=AUTHENTICATED)


@router.post("", status_code=201, responses=problems(404, 409))
def publish_slice(dataset_id: UUID, body: SliceIn, ctx: ContextDep,
                  datasets: DatasetServiceDep) -> SliceOut:
    """Publish a consented slice of your dataset (provider): the fields and rows you consent
    to share, with the consent record. Contracts may then be limited to it."""
    item = datasets.publish_slice(
        ctx, str(dataset_id), name=body.name, fields=body.fields,
        predicate=[f.to_domain() for f in body.predicate], consent=body.consent_domain())
    return SliceOut.from_domain(item)


@router.get("", responses=problems(404))
def list_slices(dataset_id: UUID, ctx: ContextDep, datasets: DatasetServiceDep
                ) -> list[SliceOut]:
    """The dataset's slices: all for its owner and auditors, those your contracts name
    otherwise."""
    return [SliceOut.from_domain(s) for s in datasets.slices(ctx, str(dataset_id))]
