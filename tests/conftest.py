"""Shared fixtures: a real app on a temporary data directory, real tokens, a small world."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr

from broker.api.auth import mint_token
from broker.app import create_app
from broker.services import contracts as contract_service
from broker.settings import Settings
from tests.migrated import engine, url  # noqa: F401  (fixtures)
from tests.oidc_provider import (  # noqa: F401  (fixtures)
    oidc_login_provider,
    oidc_provider,
    other_oidc_provider,
)
from tests.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

# No timed assertions: Hypothesis's per-example deadline would make results depend on load.
hypothesis_settings.register_profile("broker", deadline=None)
hypothesis_settings.load_profile("broker")

SECRET = "test-secret-that-is-long-enough-for-every-hmac-algorithm-0123456789abcdef"

Mint = Callable[..., str]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings on a private data directory."""
    return Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET),
                    max_upload_bytes=2_000_000)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient with the lifespan run (store, policies, keys opened)."""
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def mint(settings: Settings) -> Mint:
    """Mint a token signed with the test secret."""

    def _mint(org: str, *roles: str, sub: str | None = None, ttl: int = 600) -> str:
        return mint_token(key=SECRET, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                          sub=sub or f"user@{org}", org=org, roles=roles, ttl=ttl)

    return _mint


def auth(token: str) -> dict[str, str]:
    """Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


def token_claims(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The claims of a valid token for an econ consumer (``mallory``), with ``overrides``; an
    override of None drops that claim."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": settings.jwt_issuer, "aud": settings.jwt_audience,
                              "sub": "mallory", "org": "econ", "roles": ["consumer"],
                              "iat": now, "exp": now + 300}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A frame as CSV file content."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue().encode()


#: A tiny energy table with known answers: town A has 6 firms (one with three rows), town B 2.
ENERGY = pd.DataFrame({
    "uscc": ["E1", "E1", "E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8"],
    "town": ["A", "A", "A", "A", "A", "A", "A", "A", "B", "B"],
    "name": [f"Firm {i}" for i in (1, 1, 1, 2, 3, 4, 5, 6, 7, 8)],
    "kwh": [10.0, 20.0, 30.0, 5.0, 5.0, 5.0, 5.0, 5.0, 1000.0, 7.0],
})
ENERGY_META: dict[str, Any] = {
    "name": "energy",
    "entity_field": "uscc",
    "fields": [
        {"name": "uscc", "type": "string", "role": "entity", "sensitivity": "L2"},
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "name", "type": "string", "role": "identifier", "sensitivity": "L2"},
        {"name": "kwh", "type": "number", "role": "measure", "sensitivity": "L2"},
    ],
}


def upload(client: TestClient, token: str, frame: pd.DataFrame, meta: dict[str, Any],
           filename: str = "data.csv") -> Any:
    """POST a dataset; returns the response."""
    return client.post(
        "/v1/datasets",
        headers=auth(token),
        files={"file": (filename, csv_bytes(frame), "text/csv")},
        data={"meta": json.dumps(meta)},
    )


#: What the world's contract lets out. The identifier ``name`` goes pseudonymized: offers refuse
#: an identifier in clear (issue 18); ``legacy_world`` has a contract stored before that.
WORLD_FIELDS: dict[str, str] = {"town": "clear", "kwh": "aggregate", "name": "pseudonymize"}


def contract_terms(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    """Contract terms for the energy dataset offered to ``econ``."""
    now = datetime.now(UTC)
    terms: dict[str, Any] = {
        "dataset_id": dataset_id,
        "consumer_org": "econ",
        "purposes": ["energy-planning"],
        "fields": WORLD_FIELDS,
        "k_min": 3,
        "valid_from": (now - timedelta(minutes=5)).isoformat(),
        "valid_until": (now + timedelta(days=30)).isoformat(),
        "max_queries_per_day": 100,
    }
    terms.update(overrides)
    return terms


class World:
    """Organisations, the energy dataset and an active contract, with tokens for each actor."""

    def __init__(self, client: TestClient, mint: Mint,
                 fields: dict[str, str] | None = None) -> None:
        self.client = client
        self._uploads = 0
        self.admin = mint("broker-ops", "admin")
        self.grid = mint("grid", "provider")
        self.other_provider = mint("water", "provider")
        self.econ = mint("econ", "consumer")
        self.env = mint("env", "consumer")
        self.auditor = mint("audit-office", "auditor")
        for org, kind in [("grid", "enterprise"), ("water", "enterprise"),
                          ("econ", "department"), ("env", "department"),
                          ("audit-office", "auditor")]:
            r = client.post("/v1/orgs", headers=auth(self.admin),
                            json={"id": org, "name": org.title(), "kind": kind})
            assert r.status_code == 201, r.text
        r = upload(client, self.grid, ENERGY, ENERGY_META)
        assert r.status_code == 201, r.text
        self.dataset = r.json()
        self.fields = fields or WORLD_FIELDS
        r = client.post("/v1/contracts", headers=auth(self.grid),
                        json=contract_terms(self.dataset["id"], fields=self.fields))
        assert r.status_code == 201, r.text
        self.contract = r.json()
        r = client.post(f"/v1/contracts/{self.contract['id']}/accept", headers=auth(self.econ))
        assert r.status_code == 200, r.text

    def contract_for(self, dataset_id: str, consumer: str = "econ", **terms: Any) -> str:
        """Offer ``terms`` on ``dataset_id`` as grid to ``consumer`` (econ or env), have it
        accepted; the active contract's id."""
        r = self.client.post("/v1/contracts", headers=auth(self.grid),
                             json=contract_terms(dataset_id, consumer_org=consumer,
                                                 **{"fields": self.fields, **terms}))
        assert r.status_code == 201, r.text
        cid: str = r.json()["id"]
        token = self.econ if consumer == "econ" else self.env
        r = self.client.post(f"/v1/contracts/{cid}/accept", headers=auth(token))
        assert r.status_code == 200, r.text
        return cid

    def add_dataset(self, frame: pd.DataFrame, fields: list[dict[str, Any]],
                name: str | None = None) -> str:
        """Upload ``frame`` as grid, keyed by ``uscc``, with the other ``fields``; its id."""
        self._uploads += 1
        meta = {"name": name or f"extra-{self._uploads}", "entity_field": "uscc",
                "fields": [{"name": "uscc", "type": "string", "role": "entity"}, *fields]}
        r = upload(self.client, self.grid, frame, meta)
        assert r.status_code == 201, r.text
        did: str = r.json()["id"]
        return did

    def energy_copy(self) -> str:
        """The energy data registered again as a dataset of its own, with no contract yet: a
        field it lets out pseudonymized may not leave the world's dataset in clear."""
        self._uploads += 1
        r = upload(self.client, self.grid, ENERGY, {**ENERGY_META,
                                                    "name": f"energy-{self._uploads}"})
        assert r.status_code == 201, r.text
        did: str = r.json()["id"]
        return did

    def query(self, token: str | None = None, **body: Any) -> Any:
        """POST an aggregate query (defaults: the active contract, energy-planning)."""
        payload = {"contract_id": self.contract["id"], "purpose": "energy-planning",
                   "measures": [{"fn": "count"}], **body}
        return self.client.post("/v1/queries/aggregate", headers=auth(token or self.econ),
                                json=payload)


@pytest.fixture
def world(client: TestClient, mint: Mint) -> World:
    """A broker with orgs, one dataset and one active contract."""
    return World(client, mint)


@pytest.fixture
def legacy_world(client: TestClient, mint: Mint, monkeypatch: pytest.MonkeyPatch) -> World:
    """The world as an earlier release could have stored it: its contract (and any offered in
    the test) may let the identifier ``name`` out in clear, which offers refuse since issue
    18. Such contracts stay in force, so the policy must still deny every use of it."""
    monkeypatch.setattr(contract_service, "_check_forms", lambda *_: None)
    return World(client, mint, fields={**WORLD_FIELDS, "name": "clear"})


#: Released cells as (key, values, reason) triples.
Cells = list[tuple[dict[str, Any], Any, str | None]]


def released(response: Any) -> Cells:
    """The cells of a 200 aggregate answer as (key, values, reason)."""
    assert response.status_code == 200, response.text
    return [(c["key"], c["values"], c.get("reason")) for c in response.json()["cells"]]


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and type slug."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == slug
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body
