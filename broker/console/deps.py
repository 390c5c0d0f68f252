"""The use cases console routes take, as ``Annotated`` dependencies read off the app's
container (the same objects the API's routes get)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from broker.console.web import service
from broker.services.audit import AuditService
from broker.services.contracts import ContractService
from broker.services.datasets import DatasetService
from broker.services.health import HealthService
from broker.services.orgs import OrgService
from broker.services.queries import QueryService
from broker.settings import Settings

AuditDep = Annotated[AuditService, Depends(service("audit", AuditService))]
ContractsDep = Annotated[ContractService, Depends(service("contracts", ContractService))]
DatasetsDep = Annotated[DatasetService, Depends(service("datasets", DatasetService))]
HealthDep = Annotated[HealthService, Depends(service("health", HealthService))]
OrgsDep = Annotated[OrgService, Depends(service("orgs", OrgService))]
QueriesDep = Annotated[QueryService, Depends(service("queries", QueryService))]
SettingsDep = Annotated[Settings, Depends(service("settings", Settings))]
