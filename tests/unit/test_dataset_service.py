"""Use case: registering datasets, their versions and the catalogue, against in-memory fakes."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from broker.domain.errors import BadDataset, Conflict, NotFound, PolicyDenied
from broker.services.datasets import DatasetService, FileData
from connectors.storage import ParquetStorage
from contracts.model import FieldForm
from tests.conftest import ENERGY
from tests.fakes import FakeUnitOfWorkFactory, ManualClock
from tests.unit.conftest import ENERGY_FIELDS, County


def test_a_provider_registers_its_data_as_version_one_and_the_registration_is_audited(
    county: County, uow: FakeUnitOfWorkFactory, storage: ParquetStorage
) -> None:
    view = county.energy()
    dataset = view.dataset
    assert (dataset.owner_org, dataset.name, dataset.version, dataset.rows) == (
        "grid", "energy", 1, len(ENERGY))
    upload = county.files / "data.csv"
    assert dataset.sha256 == hashlib.sha256(upload.read_bytes()).hexdigest()
    with uow(read_only=True) as unit:
        assert unit.datasets.get(dataset.id) == dataset
        stored = storage.read(unit.datasets.version_path(dataset.id, 1))
    assert stored.num_rows == len(ENERGY)
    last = uow.audit_entries()[-1]
    assert last["action"] == "dataset.register"
    assert last["decision"]["allowed"] is True
    assert last["resource"]["dataset_id"] == dataset.id
    assert last["resource"]["version"] == 1


def test_a_taken_name_is_refused_and_the_second_upload_is_not_kept(
    county: County, uow: FakeUnitOfWorkFactory, storage: ParquetStorage
) -> None:
    first = county.energy().dataset
    entries = len(uow.audit_entries())
    with pytest.raises(Conflict):
        county.energy()
    with uow(read_only=True) as unit:
        assert [d.id for d in unit.datasets.all()] == [first.id]
    assert sorted(p.name for p in storage.root.iterdir()) == sorted([
        first.id, ".register.lock", "register.parquet.enc", "register.parquet.key"])
    assert len(uow.audit_entries()) == entries


def test_a_consumer_may_not_register_data_and_the_refusal_is_audited(
    county: County, uow: FakeUnitOfWorkFactory
) -> None:
    with pytest.raises(PolicyDenied):
        county.energy(by=county.econ)
    with uow(read_only=True) as unit:
        assert unit.datasets.all() == []
    last = uow.audit_entries()[-1]
    assert (last["action"], last["decision"]["allowed"]) == ("dataset.register", False)
    assert last["actor"]["org"] == "econ"


def test_a_file_in_an_unsupported_format_is_refused_before_anything_is_stored(
    county: County, dataset_service: DatasetService, uow: FakeUnitOfWorkFactory
) -> None:
    upload = county.csv(ENERGY, "data.ods").path
    with pytest.raises(BadDataset):
        dataset_service.register(county.grid.ctx(), name="energy", entity_field="uscc",
                                 fields=ENERGY_FIELDS, data=FileData(upload, "ods"))
    with uow(read_only=True) as unit:
        assert unit.datasets.all() == []


def test_new_data_becomes_the_next_version_and_both_versions_are_listed(
    county: County, dataset_service: DatasetService, clock: ManualClock
) -> None:
    first = county.energy().dataset
    clock.advance(timedelta(days=1))
    grown = ENERGY.assign(kwh=ENERGY["kwh"] * 2)
    second = dataset_service.add_version(county.grid.ctx(), first.id,
                                         county.csv(grown, "v2.csv")).dataset
    assert (second.id, second.version, second.schema) == (first.id, 2, first.schema)
    versions = dataset_service.versions(county.grid.ctx(), first.id)
    assert [(v.version, v.rows) for v in versions] == [(1, len(ENERGY)), (2, len(grown))]
    assert [v.sha256 for v in versions] == [first.sha256, second.sha256]
    assert versions[1].created_at == clock()
    assert dataset_service.get(county.grid.ctx(), first.id).dataset.version == 2


def test_data_identical_to_the_latest_version_is_not_a_new_version(
    county: County, dataset_service: DatasetService
) -> None:
    first = county.energy().dataset
    with pytest.raises(Conflict):
        dataset_service.add_version(county.grid.ctx(), first.id, county.csv(ENERGY, "same.csv"))
    assert [v.version for v in dataset_service.versions(county.grid.ctx(), first.id)] == [1]


def test_only_the_owner_adds_versions_and_another_providers_attempt_is_audited(
    county: County, dataset_service: DatasetService, uow: FakeUnitOfWorkFactory
) -> None:
    first = county.energy().dataset
    with pytest.raises(NotFound):
        dataset_service.add_version(county.water.ctx(), first.id,
                                    county.csv(ENERGY.head(5), "v2.csv"))
    last = uow.audit_entries()[-1]
    assert (last["action"], last["actor"]["org"]) == ("dataset.version", "water")
    assert last["decision"]["allowed"] is False
    assert last["resource"]["dataset_id"] == first.id


def test_another_providers_dataset_is_absent_from_its_catalogue_and_a_lookup_is_audited(
    county: County, dataset_service: DatasetService, uow: FakeUnitOfWorkFactory
) -> None:
    dataset = county.energy().dataset
    assert dataset_service.list(county.water.ctx()) == []
    with pytest.raises(NotFound):
        dataset_service.get(county.water.ctx(), dataset.id)
    last = uow.audit_entries()[-1]
    assert (last["action"], last["decision"]["reasons"]) == ("dataset.read", ["not-visible"])
    assert last["resource"]["dataset_id"] == dataset.id


def test_a_consumer_sees_an_offered_dataset_with_only_the_contracted_fields(
    county: County, dataset_service: DatasetService
) -> None:
    dataset = county.energy().dataset
    assert dataset_service.list(county.econ.ctx()) == []
    county.offer(dataset.id, fields={"town": FieldForm.CLEAR, "kwh": FieldForm.AGGREGATE})
    [seen] = dataset_service.list(county.econ.ctx())
    assert seen.dataset.id == dataset.id
    assert [f.name for f in seen.fields] == ["town", "kwh"]
    assert dataset_service.list(county.env.ctx()) == []
    [audited] = dataset_service.list(county.auditor.ctx())
    assert [f.name for f in audited.fields] == ["uscc", "town", "name", "kwh"]


def test_a_revoked_contract_takes_the_dataset_out_of_the_consumers_catalogue(
    county: County, dataset_service: DatasetService
) -> None:
    dataset = county.energy().dataset
    contract = county.active_contract(dataset.id).contract
    assert len(dataset_service.list(county.econ.ctx())) == 1
    county.contracts.revoke(county.grid.ctx(), contract.id)
    assert dataset_service.list(county.econ.ctx()) == []
    with pytest.raises(NotFound):
        dataset_service.get(county.econ.ctx(), dataset.id)
