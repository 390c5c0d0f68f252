"""The daily quota is exact when many queries race over real HTTP."""

from __future__ import annotations

import json
import threading
from collections import Counter

import httpx

from broker.api.auth import mint_token
from broker.app import create_app
from broker.cli.serving import serve_in_thread
from broker.settings import Settings
from tests.conftest import ENERGY, ENERGY_META, SECRET, contract_terms, csv_bytes

QUOTA = 5
ATTEMPTS = 24


def test_concurrent_queries_never_exceed_the_daily_quota(settings: Settings) -> None:
    def token(org: str, role: str, sub: str | None = None) -> str:
        return mint_token(key=SECRET, issuer=settings.jwt_issuer,
                          audience=settings.jwt_audience, sub=sub or f"u@{org}", org=org,
                          roles=[role])

    admin, grid, econ = token("broker-ops", "admin"), token("grid", "provider"), token(
        "econ", "consumer")
    # Every attempt in flight at once: the organisation's in-flight cap must not be what stops
    # them, the quota must.
    settings = settings.model_copy(update={"max_concurrent_per_org": 2 * ATTEMPTS})
    with serve_in_thread(create_app(settings)) as base, httpx.Client(base_url=base,
                                                                     timeout=60) as client:
        for org in ("grid", "econ"):
            client.post("/v1/orgs", json={"id": org, "name": org, "kind": "department"},
                        headers={"Authorization": f"Bearer {admin}"}).raise_for_status()
        dataset = client.post(
            "/v1/datasets", headers={"Authorization": f"Bearer {grid}"},
            files={"file": ("e.csv", csv_bytes(ENERGY), "text/csv")},
            data={"meta": json.dumps(ENERGY_META)}).json()
        contract = client.post("/v1/contracts", headers={"Authorization": f"Bearer {grid}"},
                               json=contract_terms(dataset["id"], max_queries_per_day=QUOTA)
                               ).json()
        client.post(f"/v1/contracts/{contract['id']}/accept",
                    headers={"Authorization": f"Bearer {econ}"}).raise_for_status()

        statuses: list[int] = []
        reasons: list[str] = []
        lock = threading.Lock()

        def ask(analyst: int) -> None:
            # Each attempt is an analyst of its own: the quota is the contract's, whoever asks
            # (one principal would meet its own in-flight cap first).
            own_token = token("econ", "consumer", sub=f"analyst-{analyst}@econ")
            with httpx.Client(base_url=base, timeout=60) as own:
                r = own.post("/v1/queries/aggregate",
                             headers={"Authorization": f"Bearer {own_token}"},
                             json={"contract_id": contract["id"], "purpose": "energy-planning",
                                   "group_by": ["town"], "measures": [{"fn": "count"}]})
            with lock:
                statuses.append(r.status_code)
                if r.status_code == 403:
                    reasons.extend(r.json()["reasons"])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(ATTEMPTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        auditor = token("audit-office", "auditor")
        client.post("/v1/orgs", json={"id": "audit-office", "name": "A", "kind": "auditor"},
                    headers={"Authorization": f"Bearer {admin}"}).raise_for_status()
        entries = client.get("/v1/audit/entries", headers={"Authorization": f"Bearer {auditor}"},
                             params={"action": "query.aggregate", "limit": 1000}).json()
        verify = client.get("/v1/audit/verify",
                            headers={"Authorization": f"Bearer {auditor}"}).json()

    assert Counter(statuses) == {200: QUOTA, 403: ATTEMPTS - QUOTA}
    assert set(reasons) == {"daily-quota-exhausted"}
    allowed = [e for e in entries["entries"] if e["entry"]["decision"]["allowed"]]
    assert len(allowed) == QUOTA
    assert len(entries["entries"]) == ATTEMPTS
    assert verify["valid"] is True
