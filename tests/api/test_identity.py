"""Roles bound to organisations, per-principal limits, and health answered outside the pool."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import Counter
from pydantic import SecretStr

from broker.api.deps import _readiness
from broker.api.limits import PrincipalLimits, PrincipalMiddleware
from broker.api.routes import health
from broker.app import create_app
from broker.domain.organisations import OrgKind
from broker.domain.principals import Principal, Role, misfit_roles
from broker.settings import Settings
from tests.conftest import SECRET, Mint, World, assert_problem, auth


def _audit(world: World, action: str) -> list[dict[str, Any]]:
    r = world.client.get("/v1/audit/entries", headers=auth(world.auditor),
                         params={"action": action, "limit": 200})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = [e["entry"] for e in r.json()["entries"]]
    return items


# -- roles bound to organisations ---------------------------------------------------------------

@pytest.mark.parametrize(("roles", "kind", "operator", "misfits"), [
    ({Role.CONSUMER}, OrgKind.DEPARTMENT, False, []),
    ({Role.CONSUMER, Role.PROVIDER}, OrgKind.DEPARTMENT, False, []),
    ({Role.PROVIDER}, OrgKind.ENTERPRISE, False, []),
    ({Role.AUDITOR}, OrgKind.AUDITOR, False, []),
    ({Role.ADMIN}, None, True, []),
    ({Role.CONSUMER}, OrgKind.ENTERPRISE, False, [Role.CONSUMER]),
    ({Role.PROVIDER, Role.CONSUMER}, OrgKind.ENTERPRISE, False, [Role.CONSUMER]),
    ({Role.AUDITOR}, OrgKind.DEPARTMENT, False, [Role.AUDITOR]),
    ({Role.PROVIDER}, OrgKind.AUDITOR, False, [Role.PROVIDER]),
    ({Role.ADMIN}, OrgKind.DEPARTMENT, False, [Role.ADMIN]),
    ({Role.PROVIDER}, None, False, [Role.PROVIDER]),
    ({Role.ADMIN, Role.AUDITOR}, None, True, [Role.AUDITOR]),
])
def test_which_roles_fit_which_organisations(
    roles: set[Role], kind: OrgKind | None, operator: bool, misfits: list[Role]
) -> None:
    assert misfit_roles(frozenset(roles), kind, operator=operator) == misfits


def test_an_enterprise_claiming_auditor_reads_nothing_and_the_attempt_is_audited(
    world: World, mint: Mint
) -> None:
    forged = mint("grid", "auditor", sub="insider@grid")
    for path in ("/v1/audit/entries", "/v1/audit/verify", "/v1/orgs"):
        body = assert_problem(world.client.get(path, headers=auth(forged)), 403, "policy-denied")
        assert body["reasons"] == ["role-not-allowed-for-org"]
        assert "auditor" in body["detail"]
    entries = [e for e in _audit(world, "token.admit") if e["actor"]["sub"] == "insider@grid"]
    assert len(entries) == 3
    assert all(e["decision"]["allowed"] is False
               and e["decision"]["reasons"] == ["role-not-allowed-for-org"] for e in entries)


def test_an_unregistered_org_claiming_admin_registers_nothing(world: World, mint: Mint) -> None:
    rogue = mint("shadow-ops", "admin")
    r = world.client.post("/v1/orgs", headers=auth(rogue),
                          json={"id": "shell-co", "name": "Shell", "kind": "enterprise"})
    assert assert_problem(r, 403, "policy-denied")["reasons"] == [
        "org-not-registered", "role-not-allowed-for-org"]
    ids = {o["id"] for o in world.client.get("/v1/orgs", headers=auth(world.admin)).json()}
    assert "shell-co" not in ids


@pytest.mark.parametrize(("org", "roles"), [
    ("broker-ops", ("consumer",)),          # the operator holds admin only
    ("broker-ops", ("admin", "auditor")),
    ("econ", ("admin",)),                   # admin only at the operator
    ("grid", ("consumer",)),                # consumers are departments
    ("grid", ("provider", "consumer")),     # one misfit role spoils the token
    ("audit-office", ("provider",)),
    ("econ", ("auditor",)),
    ("nobody-here", ("consumer",)),         # unregistered
])
def test_every_role_needs_an_organisation_of_its_kind(
    world: World, mint: Mint, org: str, roles: tuple[str, ...]
) -> None:
    token = mint(org, *roles)
    for r in (world.client.get("/v1/datasets", headers=auth(token)), world.query(token=token)):
        assert "role-not-allowed-for-org" in assert_problem(r, 403, "policy-denied")["reasons"]


def test_fitting_roles_still_work(world: World, mint: Mint) -> None:
    assert world.query(token=mint("econ", "consumer", "provider"),
                       group_by=["town"]).status_code == 200
    assert world.client.get("/v1/datasets", headers=auth(world.grid)).status_code == 200
    assert world.client.get("/v1/audit/verify", headers=auth(world.auditor)).status_code == 200


def test_the_operator_org_cannot_be_registered(world: World) -> None:
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "broker-ops", "name": "Squat", "kind": "auditor"})
    assert_problem(r, 409, "conflict")


def test_the_operator_org_is_configurable(tmp_path: Path, mint: Mint) -> None:
    settings = Settings(data_dir=tmp_path / "v", jwt_secret=SecretStr(SECRET),
                        operator_org="county-it")
    with TestClient(create_app(settings)) as c:
        ok = c.post("/v1/orgs", headers=auth(mint("county-it", "admin")),
                    json={"id": "grid", "name": "Grid", "kind": "enterprise"})
        assert ok.status_code == 201, ok.text
        r = c.post("/v1/orgs", headers=auth(mint("broker-ops", "admin")),
                   json={"id": "water", "name": "Water", "kind": "enterprise"})
        assert_problem(r, 403, "policy-denied")


# -- per-principal rate limit -------------------------------------------------------------------

@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "v", jwt_secret=SecretStr(SECRET),
                        rate_limit="5/minute")
    with TestClient(create_app(settings)) as c:
        yield c


def test_over_the_rate_limit_is_a_429_with_retry_after_and_audited_once(
    limited: TestClient, mint: Mint
) -> None:
    admin, other = mint("broker-ops", "admin"), mint("broker-ops", "admin", sub="second")
    codes = [limited.get("/v1/orgs", headers=auth(admin)).status_code for _ in range(5)]
    assert codes == [200] * 5
    for _ in range(20):
        r = limited.get("/v1/orgs", headers=auth(admin))
        body = assert_problem(r, 429, "rate-limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "nothing was done" in body["detail"]
    # Another principal (another sub) is not held up; health is never limited.
    assert limited.get("/v1/orgs", headers=auth(other)).status_code == 200
    assert limited.get("/healthz", headers=auth(admin)).status_code == 200
    # Refusals did not reach the routes: no entries for them but the one for the flood.
    auditor_org = limited.post("/v1/orgs", headers=auth(other),
                               json={"id": "audit-office", "name": "A", "kind": "auditor"})
    assert auditor_org.status_code == 201
    seen = limited.get("/v1/audit/entries", headers=auth(mint("audit-office", "auditor")),
                       params={"limit": 200}).json()["entries"]
    seen = [e["entry"] for e in seen]
    flood = [e for e in seen if e["actor"]["sub"] == "user@broker-ops"]
    assert [(e["action"], e["decision"]["reasons"]) for e in flood] == [
        ("request.limit", ["rate-limited"])]
    metrics = limited.get("/metrics").text
    assert 'broker_requests_limited_total{reason="rate-limited"} 20.0' in metrics


def test_rate_limit_setting_is_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        Settings(data_dir=tmp_path, rate_limit="lots per fortnight")


def test_invalid_tokens_are_401_until_their_address_passes_the_rate(
    limited: TestClient, mint: Mint
) -> None:
    for i in range(5):
        r = limited.get("/v1/orgs", headers=auth(f"not.a.token{i}"))
        assert_problem(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"] == 'Bearer realm="broker"'
    for path in ("/v1/orgs", "/v1/datasets"):
        r = limited.get(path, headers=auth("not.a.token"))
        assert_problem(r, 429, "rate-limited")
        assert int(r.headers["retry-after"]) >= 1
        assert_problem(limited.get(path), 429, "rate-limited")  # no token: same address
    # A valid token from the same address (the same proxy) is still served.
    assert limited.get("/v1/orgs", headers=auth(mint("broker-ops", "admin"))).status_code == 200
    assert limited.get("/healthz").status_code == 200


def test_a_verifier_that_breaks_is_a_401_not_a_500(client: TestClient) -> None:
    class Broken:
        def verify(self, token: str) -> Principal:
            raise RecursionError(token[:3])

    object.__setattr__(client.app.state.container, "tokens", Broken())  # type: ignore[attr-defined]
    assert_problem(client.get("/v1/orgs", headers=auth("x.y.z")), 401, "unauthenticated")


# -- the in-flight cap, driven through the real middleware -------------------------------------

def _principal(sub: str) -> Principal:
    return Principal(iss="t", sub=sub, org="econ", roles=frozenset({Role.CONSUMER}))


class _Tokens:
    def verify(self, token: str) -> Principal:
        return _principal(token)


class _Audit:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, tuple[str, ...]]] = []

    def record_refusal(self, ctx: Any, action: str, reasons: tuple[str, ...]) -> None:
        self.recorded.append((action, reasons))
        assert ctx.principal.sub in {"alice", "carol"}


def test_a_principal_gets_at_most_its_cap_in_flight_and_others_are_unaffected() -> None:
    release = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    class State:
        container = type("C", (), {"tokens": _Tokens(), "audit": _Audit()})()

    class App:
        state = State()

    from prometheus_client import CollectorRegistry
    refused = Counter("limited", "x", ["reason"], registry=CollectorRegistry())
    middleware = PrincipalMiddleware(slow_app, limits=PrincipalLimits("", 2, 3), refused=refused)

    async def call(sub: str) -> tuple[int, dict[str, str]]:
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/v1/orgs", "app": App(), "method": "GET",
                 "headers": [(b"authorization", f"Bearer {sub}".encode())]}
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        await middleware(scope, receive, send)
        start = sent[0]
        return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}

    async def run() -> list[tuple[int, dict[str, str]]]:
        async with anyio.create_task_group() as tg:
            results: list[tuple[int, dict[str, str]]] = []

            async def one(sub: str) -> None:
                results.append(await call(sub))

            for _ in range(2):
                tg.start_soon(one, "alice")
            await anyio.sleep(0.2)  # both of alice's slots are taken now
            third = await call("alice")
            assert third[0] == 429
            assert third[1]["retry-after"] == "1"
            tg.start_soon(one, "bob")  # the organisation's third slot
            await anyio.sleep(0.2)
            fourth = await call("carol")  # same organisation: its cap of 3 is reached
            assert fourth[0] == 429
            release.set()
        return results

    results = anyio.run(run)
    assert sorted(status for status, _ in results) == [200, 200, 200]
    assert anyio.run(call, "alice")[0] == 200  # the slots came back
    audit = App.state.container.audit
    assert audit.recorded == [("request.limit", ("too-many-concurrent-requests",)),
                              ("request.limit", ("too-many-concurrent-requests",))]


# -- health outside the worker pool ------------------------------------------------------------

def test_health_and_readiness_answer_with_every_worker_thread_taken(settings: Settings) -> None:
    app = create_app(settings)

    async def run() -> None:
        limiter = anyio.to_thread.current_default_thread_limiter()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                borrowers = [object() for _ in range(int(limiter.total_tokens))]
                taken: list[object] = []
                try:
                    for borrower in borrowers:
                        await limiter.acquire_on_behalf_of(borrower)
                        taken.append(borrower)
                    with anyio.fail_after(5):
                        assert (await client.get("/healthz")).status_code == 200
                        r = await client.get("/readyz")
                        assert r.status_code == 200, r.text
                        assert (await client.get("/metrics")).status_code == 200
                finally:
                    for borrower in taken:
                        limiter.release_on_behalf_of(borrower)

    anyio.run(run)


def test_a_busy_broker_stays_ready_and_a_hung_one_does_not(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(settings)
    gate = threading.Event()
    calls: list[str] = []

    def probe() -> str:
        calls.append("probe")
        if len(calls) > 1:
            gate.wait(10)  # the database is slow to hand out a connection
        return "rev-1"

    async def readiness() -> Any:
        return probe

    app.dependency_overrides[_readiness] = readiness

    async def run() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                first = await client.get("/readyz")
                assert first.json() == {"status": "ready", "policy_revision": "rev-1"}
                with anyio.fail_after(3):  # answered from the last probe, not waited for
                    slow = await client.get("/readyz")
                assert slow.json() == {"status": "ready", "policy_revision": "rev-1"}
                monkeypatch.setattr(health, "READY_GRACE", 0.0)  # now it has hung too long
                with anyio.fail_after(3):
                    hung = await client.get("/readyz")
                assert_problem(hung, 503, "unavailable")
                gate.set()

    anyio.run(run)
    assert len(calls) == 2  # requests during a probe share it


def test_bodies_without_a_token_are_never_read_and_json_is_bounded(world: World) -> None:
    c = world.client
    crafted = b"[" + b"[]," * 60_000 + b"[]]"
    r = c.post("/v1/queries/aggregate", content=crafted,
               headers={"content-type": "application/json"})
    assert_problem(r, 401, "unauthenticated")
    assert_problem(c.post("/v1/no-such-route", content=b"{}"), 404, "not-found")
    assert_problem(c.delete("/v1/orgs"), 405, "method-not-allowed")
    r = c.post("/v1/queries/aggregate", content=crafted,
               headers={**auth(world.econ), "content-type": "application/json"})
    assert "50000 values" in assert_problem(r, 413, "payload-too-large")["detail"]
    # No content type: FastAPI would parse it as JSON, so it is bounded the same way.
    r = c.post("/v1/queries/aggregate", content=crafted, headers=auth(world.econ))
    assert_problem(r, 413, "payload-too-large")
    # Under the bound the body reaches the route as sent.
    assert world.query(group_by=["town"]).status_code == 200
