"""Attacks on identity and limits (issue 18): roles bound to organisations, per-principal rate
limit and in-flight cap, health under load, OIDC verification and token lifetime.

Every test asserts that the defence holds (it passes when the broker is safe).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker.api.auth import mint_token
from broker.app import create_app
from broker.console.web import ConsoleRoute
from broker.settings import Settings, issuer_url_problem
from tests.conftest import SECRET, Mint, World, assert_problem, auth, token_claims
from tests.oidc_provider import OidcProvider
from tests.server import broker_server

TIMINGS: dict[str, float] = {}


def signed(settings: Settings, **overrides: Any) -> str:
    """An HS256 dev token with the claims of ``token_claims`` and ``overrides``."""
    return jwt.encode(token_claims(settings, **overrides), SECRET, algorithm="HS256")


def raw(claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """An HS256 token whose payload is ``claims`` serialised as is (floats, huge ints)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    import hashlib
    import hmac
    head = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


# --- roles bound to organisations ---------------------------------------------------------


def _misfits(mint: Mint) -> dict[str, str]:
    """Tokens whose roles do not fit their organisation (orgs as in ``World``)."""
    return {
        "enterprise-auditor": mint("grid", "auditor", sub="m1"),
        "enterprise-consumer": mint("grid", "consumer", sub="m2"),
        "enterprise-admin": mint("grid", "admin", sub="m3"),
        "department-admin": mint("econ", "admin", "consumer", sub="m4"),
        "department-auditor": mint("econ", "auditor", sub="m5"),
        "auditor-consumer": mint("audit-office", "consumer", "auditor", sub="m6"),
        "auditor-provider": mint("audit-office", "provider", sub="m7"),
        "unregistered-admin": mint("ghost-org", "admin", sub="m8"),
        "unregistered-provider": mint("ghost-org", "provider", sub="m9"),
        "operator-auditor": mint("broker-ops", "admin", "auditor", sub="m10"),
        "operator-provider": mint("broker-ops", "provider", sub="m11"),
    }


#: Routes that need no token at all (public by design).
PUBLIC = {"/healthz", "/readyz", "/metrics", "/v1/audit/key", "/openapi.json", "/docs",
          "/docs/oauth2-redirect", "/redoc"}


def _is_misfit(r: Any) -> bool:
    """A 403 problem naming ``role-not-allowed-for-org`` among its reasons."""
    if r.status_code != 403 or not r.headers["content-type"].startswith(
            "application/problem+json"):
        return False
    return "role-not-allowed-for-org" in r.json().get("reasons", [])


def assert_misfit(r: Any) -> None:
    assert _is_misfit(r), (r.status_code, r.text)


def _api_routes(routes: Any) -> list[APIRoute]:
    """Every APIRoute of the app, through included routers (FastAPI wraps them)."""
    found: list[APIRoute] = []
    for r in routes:
        if isinstance(r, APIRoute):
            found.append(r)
        elif hasattr(r, "original_router"):
            found += _api_routes(r.original_router.routes)
    return found


def _concrete(path: str, world: World) -> str:
    """``path`` with its parameters filled by ids that exist where possible."""
    return (path.replace("{contract_id}", world.contract["id"])
            .replace("{dataset_id}", world.dataset["id"])
            .replace("{seq}", "1"))


def test_misfit_tokens_are_refused_on_every_authenticated_route(world: World,
                                                                 mint: Mint) -> None:
    """Enumerate every route of the app; every misfit token gets 403 role-not-allowed-for-org
    on each authenticated one (never 2xx, never a 4xx that reveals more)."""
    # The console's routes take no bearer token (a session cookie only: the console's own
    # tests refuse misfit sessions there).
    routes = [r for r in _api_routes(world.client.app.routes)  # type: ignore[attr-defined]
              if r.path not in PUBLIC and not isinstance(r, ConsoleRoute)
              and not r.path.startswith("/console")]
    assert len(routes) >= 25
    leaks = []
    for name, token in _misfits(mint).items():
        for route in routes:
            for method in route.methods or ():
                r = world.client.request(method, _concrete(route.path, world),
                                         headers=auth(token), json={})
                if not _is_misfit(r):
                    leaks.append((name, method, route.path, r.status_code, r.text[:120]))
            for method in ("HEAD", "OPTIONS"):
                r = world.client.request(method, _concrete(route.path, world),
                                         headers=auth(token))
                if 200 <= r.status_code < 300:
                    leaks.append((name, method, route.path, r.status_code, r.text[:120]))
    assert not leaks, leaks


def test_misfit_tokens_never_get_2xx_anywhere_even_with_valid_bodies(world: World,
                                                                     mint: Mint) -> None:
    """The attacks of issue 18, item 1, with well-formed requests."""
    t = _misfits(mint)
    assert_misfit(world.client.get("/v1/audit/entries", headers=auth(t["enterprise-auditor"])))
    r = world.client.post("/v1/orgs", headers=auth(t["unregistered-admin"]),
                          json={"id": "evil", "name": "Evil", "kind": "auditor"})
    assert_misfit(r)
    r = world.client.post("/v1/orgs", headers=auth(t["department-admin"]),
                          json={"id": "evil2", "name": "Evil", "kind": "auditor"})
    assert_misfit(r)
    assert_misfit(world.query(t["enterprise-consumer"]))
    r = world.client.get("/v1/audit/verify", headers=auth(t["department-auditor"]))
    assert_misfit(r)
    # nothing registered, and each refusal is on the record
    orgs = {o["id"] for o in world.client.get("/v1/orgs", headers=auth(world.admin)).json()}
    assert "evil" not in orgs
    assert "evil2" not in orgs
    r = world.client.get("/v1/audit/entries", headers=auth(world.auditor),
                         params={"action": "token.admit", "limit": 1000})
    assert r.status_code == 200, r.text
    assert len(r.json()["entries"]) >= 5


@pytest.mark.parametrize("org", [
    "Broker-Ops", "BROKER-OPS", "broker-ops ", " broker-ops", "broker-ops\n", "broker-ops\x00",
    "broker\u2010ops", "broker\u2011ops", "br\u043eker-ops", "\uff42roker-ops",
    "broker-ops\u200b", ["broker-ops"], {"id": "broker-ops"}, 1, True, "", "b",
])
def test_operator_org_confusables_in_the_org_claim_are_refused(client: TestClient,
                                                               settings: Settings,
                                                               org: Any) -> None:
    token = signed(settings, org=org, roles=["admin"])
    r = client.post("/v1/orgs", headers=auth(token),
                    json={"id": "evil", "name": "Evil", "kind": "auditor"})
    assert r.status_code in (401, 403), r.text
    assert client.get("/v1/orgs", headers=auth(token)).status_code in (401, 403)


@pytest.mark.parametrize("oid", ["Broker-Ops", "broker-ops ", "broker\u2010ops",
                                 "br\u043eker-ops", "broker-ops\n"])
def test_operator_org_id_cannot_be_registered_in_disguise(world: World, oid: str) -> None:
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": oid, "name": "Ops", "kind": "department"})
    assert r.status_code in (409, 422), r.text
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "broker-ops", "name": "Ops", "kind": "auditor"})
    assert r.status_code == 409, r.text


@pytest.mark.parametrize("roles", [
    ["Admin"], ["ADMIN"], [" admin"], ["admin", "root"], ["admin", None], "admin",
    {"admin": True}, [], [["admin"]], [1],
])
def test_malformed_roles_are_refused(client: TestClient, settings: Settings,
                                     roles: Any) -> None:
    token = signed(settings, org="broker-ops", roles=roles)
    r = client.post("/v1/orgs", headers=auth(token),
                    json={"id": "evil", "name": "Evil", "kind": "auditor"})
    assert_problem(r, 401, "unauthenticated")


def test_duplicate_roles_are_harmless(client: TestClient, settings: Settings) -> None:
    token = signed(settings, org="broker-ops", roles=["admin", "admin"])
    assert client.get("/v1/orgs", headers=auth(token)).status_code == 200
    token = signed(settings, org="broker-ops", roles=["admin", "admin", "auditor"])
    assert_misfit(client.get("/v1/orgs", headers=auth(token)))


def test_an_org_registered_later_is_admitted_only_for_its_kind(world: World,
                                                               mint: Mint) -> None:
    early = mint("late-co", "provider", "consumer", sub="early")
    r = world.client.get("/v1/datasets", headers=auth(early))
    assert_misfit(r)
    assert "org-not-registered" in r.json()["reasons"]
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "late-co", "name": "Late", "kind": "enterprise"})
    assert r.status_code == 201, r.text
    # the same (cached) token now: provider fits, consumer does not -> still refused
    assert_misfit(world.client.get("/v1/datasets", headers=auth(early)))
    ok = mint("late-co", "provider", sub="early")
    assert world.client.get("/v1/datasets", headers=auth(ok)).status_code == 200


def test_a_department_provider_consumer_cannot_touch_another_orgs_data(world: World,
                                                                       mint: Mint) -> None:
    both = mint("env", "provider", "consumer", sub="both@env")
    cid = world.contract["id"]
    for method, path in [("POST", f"/v1/contracts/{cid}/accept"),
                         ("POST", f"/v1/contracts/{cid}/suspend"),
                         ("POST", f"/v1/contracts/{cid}/revoke"),
                         ("GET", f"/v1/contracts/{cid}/terms")]:
        r = world.client.request(method, path, headers=auth(both))
        assert r.status_code in (403, 404), (path, r.text)
    r = world.query(both)
    assert r.status_code in (403, 404), r.text
    r = world.client.post(f"/v1/datasets/{world.dataset['id']}/versions/import",
                          headers=auth(both), json={"table": "x"})
    assert r.status_code in (403, 404, 422), r.text


# --- rate limit and in-flight cap ---------------------------------------------------------


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    s = Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET), rate_limit="5/minute")
    with TestClient(create_app(s)) as c:
        c.app.state.test_settings = s  # type: ignore[attr-defined]
        yield c


def _mint_for(settings: Settings, org: str, *roles: str, sub: str, ttl: int = 600) -> str:
    return mint_token(key=SECRET, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                      sub=sub, org=org, roles=roles, ttl=ttl)


def test_rate_limit_cannot_be_evaded_by_header_tricks_or_token_reissue(
        limited: TestClient) -> None:
    s: Settings = limited.app.state.test_settings  # type: ignore[attr-defined]
    token = _mint_for(s, "broker-ops", "admin", sub="ops")
    for _ in range(5):
        assert limited.get("/v1/orgs", headers=auth(token)).status_code == 200
    other = _mint_for(s, "broker-ops", "admin", sub="ops", ttl=900)  # reissued, same sub
    variants: list[list[tuple[str, str]]] = [
        [("Authorization", f"Bearer {token}")],
        [("Authorization", f"bearer {token}")],
        [("Authorization", f"BEARER {token}")],
        [("Authorization", f"Bearer   {token}  ")],
        [("Authorization", f"Bearer {other}")],
        [("Authorization", f"Bearer {token}"), ("Authorization", "Bearer garbage")],
        [("Authorization", "Bearer garbage"), ("Authorization", f"Bearer {token}")],
        [("Authorization", "Basic Zm9vOmJhcg=="), ("Authorization", f"Bearer {token}")],
        [("Authorization", f"Bearer {token}"), ("X-Forwarded-For", "10.9.8.7")],
    ]
    for headers in variants:
        r = limited.get("/v1/orgs", headers=httpx.Headers(headers))
        assert r.status_code in (401, 429), (headers[0][1][:20], r.status_code, r.text)
        if r.status_code == 429:
            body = assert_problem(r, 429, r.json()["type"])
            assert int(r.headers["retry-after"]) >= 1
            assert token not in r.text
            assert "ops" not in body["detail"]
    # the token in the query string or a cookie is not a credential
    r = limited.get("/v1/orgs", params={"access_token": token})
    assert r.status_code == 401
    r = limited.get("/v1/orgs", cookies={"access_token": token})
    assert r.status_code == 401


def test_a_flood_over_the_limit_writes_one_audit_entry(limited: TestClient) -> None:
    s: Settings = limited.app.state.test_settings  # type: ignore[attr-defined]
    flooder = _mint_for(s, "ghost-org", "provider", sub="flooder")
    statuses = [limited.get("/v1/datasets", headers=auth(flooder)).status_code
                for _ in range(300)]
    assert statuses.count(403) == 5, statuses[:10]
    assert statuses.count(429) == 295, statuses[:10]
    # count the record through the store (the auditor would be limited too)
    admin = _mint_for(s, "broker-ops", "admin", sub="ops2")
    assert limited.post("/v1/orgs", headers=auth(admin), json={
        "id": "aud", "name": "Aud", "kind": "auditor"}).status_code == 201
    auditor = _mint_for(s, "aud", "auditor", sub="aud")
    entries: list[dict[str, Any]] = []
    for action in ("token.admit", "request.limit"):
        r = limited.get("/v1/audit/entries", headers=auth(auditor),
                        params={"action": action, "limit": 1000})
        assert r.status_code == 200, r.text
        entries += r.json()["entries"]
    assert len(entries) <= 6, len(entries)


def test_in_flight_slots_are_released_on_every_failure_path(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET),
                 max_concurrent_per_principal=1, rate_limit="100000/minute", max_body_bytes=10_000)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        admin = _mint_for(s, "broker-ops", "admin", sub="ops")
        for _ in range(20):
            c.post("/v1/orgs", headers=auth(admin), content=b"x" * 20_000)  # 413
            c.post("/v1/orgs", headers=auth(admin), json={"id": 1})  # 422
            c.post("/v1/orgs", headers=auth(admin), content=b"\xff\xfe")  # 400/422
            c.get(f"/v1/contracts/{uuid.uuid4()}", headers=auth(admin))  # 403/404
            c.get("/v1/contracts/not-a-uuid", headers=auth(admin))  # 422
            c.delete("/v1/orgs", headers=auth(admin))  # 405
            c.get("/v1/nowhere", headers=auth(admin))  # 404
            c.get("/v1/datasets", headers=auth(admin))  # 403 misfit
            c.get("/v1/audit/entries?cursor=zz", headers=auth(admin))
        assert c.get("/v1/orgs", headers=auth(admin)).status_code == 200


def _server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"BROKER_DATA_DIR": str(tmp_path / "var"), "BROKER_JWT_SECRET": SECRET, **extra}


def _raw_request(base: str, data: bytes) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(data)
    return sock


def test_aborted_and_stalled_requests_release_their_slots(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET))
    env = _server_env(tmp_path, BROKER_MAX_CONCURRENT_PER_PRINCIPAL="2",
                      BROKER_RATE_LIMIT="100000/minute")
    with broker_server(tmp_path, env) as base:
        admin = _mint_for(s, "broker-ops", "admin", sub="ops")
        head = (f"POST /v1/orgs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n"
                "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"id").encode()
        stalled = [_raw_request(base, head) for _ in range(2)]
        time.sleep(0.5)
        r = httpx.get(f"{base}/v1/orgs", headers=auth(admin), timeout=5)
        assert r.status_code == 429, r.text  # the cap counts stalled uploads
        for sock in stalled:
            sock.close()
        # 30 more aborted mid-body, then a clean one must get through quickly
        for _ in range(30):
            _raw_request(base, head).close()
        deadline = time.monotonic() + 5
        while True:
            r = httpx.get(f"{base}/v1/orgs", headers=auth(admin), timeout=5)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        TIMINGS["slot-release-after-abort-s"] = 5 - (deadline - time.monotonic())
        assert r.status_code == 200, r.text


def test_health_answers_promptly_under_a_flood_of_many_principals(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET))
    env = _server_env(tmp_path)
    with broker_server(tmp_path, env) as base:
        admin = _mint_for(s, "broker-ops", "admin", sub="ops")
        for org, kind in [("grid", "enterprise"), ("audit-office", "auditor")]:
            httpx.post(f"{base}/v1/orgs", headers=auth(admin), timeout=10,
                       json={"id": org, "name": org, "kind": kind})
        tokens = [_mint_for(s, "grid", "auditor", sub=f"flood{i}") for i in range(16)]
        tokens += [_mint_for(s, "audit-office", "auditor", sub=f"v{i}") for i in range(4)]
        stop = threading.Event()

        def flood(token: str) -> int:
            n = 0
            with httpx.Client(timeout=30) as h:
                while not stop.is_set():
                    path = ("/v1/audit/verify" if "v" in jwt.decode(
                        token, options={"verify_signature": False})["sub"][:1]
                        else "/v1/audit/entries")
                    h.get(f"{base}{path}", headers=auth(token))
                    n += 1
            return n

        with ThreadPoolExecutor(max_workers=len(tokens) * 2) as pool:
            futures = [pool.submit(flood, t) for t in tokens for _ in range(2)]
            time.sleep(1)
            health, ready = [], []
            with httpx.Client(timeout=10) as h:
                for _ in range(8):
                    t0 = time.monotonic()
                    assert h.get(f"{base}/healthz").status_code == 200
                    health.append(time.monotonic() - t0)
                    t0 = time.monotonic()
                    ready_status = h.get(f"{base}/readyz").status_code
                    ready.append(time.monotonic() - t0)
                    assert ready_status in (200, 503)
                    time.sleep(0.1)
            stop.set()
            sent = sum(f.result() for f in futures)
        TIMINGS["healthz-max-s"] = max(health)
        TIMINGS["readyz-max-s"] = max(ready)
        TIMINGS["flood-requests"] = sent
        sys.stderr.write(f"TIMINGS {TIMINGS}\n")
        assert max(health) < 5, health
        assert max(ready) < 5, ready


#: A process of threads POSTing, without any token, a 1 MB JSON body that is costly to parse
#: (``[[],[],...]``, about 0.1 s of json.loads) or cheap to parse (one long string).
_JSON_FLOOD = r"""
import sys, threading, httpx
base, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "costly":
    body = ("[" + ",".join(["[]"] * 340000) + "]").encode()
    body = body[:1000 * 1024].rsplit(b",", 1)[0] + b"]"
else:
    body = b'"' + b"a" * 1000000 + b'"'
def run():
    with httpx.Client(timeout=60) as h:
        while True:
            try:
                h.post(base + "/v1/queries/aggregate", content=body,
                       headers={"Content-Type": "application/json"})
            except httpx.HTTPError:
                pass
threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_health_answers_promptly_under_an_anonymous_flood_of_costly_json(
        tmp_path: Path) -> None:
    """HOLE: FastAPI parses a JSON body (``await request.json()``, a synchronous json.loads)
    on the event loop before any dependency runs, so before the token is even looked at. A
    request with no token has no principal, so neither the rate limit nor the in-flight cap
    applies, and 1 MB of ``[[],[],...]`` costs about 0.1 s of the event loop each. With 32
    anonymous senders (4 processes of 8 threads) /healthz took up to 2.7-8.6 s (median ~1 s);
    with the same flood of cheap-to-parse 1 MB strings it stays under 0.4 s. Issue 18 asks for
    health 'within 1 s under any load' and that a flood 'cannot starve others'."""
    env = _server_env(tmp_path)
    with broker_server(tmp_path, env) as base:
        procs = [subprocess.Popen([sys.executable, "-c", _JSON_FLOOD, base, "costly", "8"])
                 for _ in range(4)]
        try:
            time.sleep(1.5)
            health = []
            with httpx.Client(timeout=30) as h:
                for _ in range(8):
                    t0 = time.monotonic()
                    assert h.get(f"{base}/healthz").status_code == 200
                    health.append(time.monotonic() - t0)
                    if health[-1] > 1:
                        break  # already a failure: do not keep the module waiting
                    time.sleep(0.1)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    TIMINGS["healthz-anon-json-flood-max-s"] = max(health)
    sys.stderr.write(f"TIMINGS {TIMINGS} {sorted(health)}\n")
    # the issue's own bound; the same flood of cheap 1 MB strings keeps /healthz under 0.4 s
    assert max(health) < 1, sorted(health)


# --- token lifetime -----------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


@pytest.mark.parametrize("overrides", [
    {"exp": 1e300}, {"exp": float(_now() + 300)}, {"exp": _now() + 300.5}, {"exp": True},
    {"exp": 10**400}, {"exp": str(_now() + 300)}, {"exp": -1}, {"exp": None},
    {"iat": float(_now())}, {"iat": True}, {"iat": None}, {"iat": str(_now())},
    {"iat": _now() + 3600, "exp": _now() + 3900},
    {"iat": _now() - 10 * 365 * 86400, "exp": _now() + 300},
    {"iat": _now(), "exp": _now() + 86_401},
    {"iat": -(2**53) + 1, "exp": _now() + 300},
    {"nbf": _now() + 3600},
    {"exp": _now() + 100 * 365 * 86400},
])
def test_bad_lifetimes_are_refused(client: TestClient, settings: Settings,
                                   overrides: dict[str, Any]) -> None:
    claims = token_claims(settings, org="broker-ops", roles=["admin"], **overrides)
    if "exp" in overrides and overrides["exp"] is None:
        claims.pop("exp", None)
    if "iat" in overrides and overrides["iat"] is None:
        claims.pop("iat", None)
    token = raw(claims) if isinstance(overrides.get("exp"), int) and overrides[
        "exp"] > 2**63 else jwt.encode(claims, SECRET, algorithm="HS256")
    assert_problem(client.get("/v1/orgs", headers=auth(token)), 401, "unauthenticated")


def test_nbf_must_be_an_integer_too(client: TestClient, settings: Settings) -> None:
    """HOLE (low severity): issue 18 says 'NumericDates must be integers' and ``nbf`` is a
    NumericDate (RFC 7519 4.1.5), but only ``iat`` and ``exp`` are checked: PyJWT int()s
    ``nbf``, so a float, a numeric string, a bool or -1e300 is accepted (200). It only ever
    delays a token, so it grants nothing; it is the integer rule that does not hold."""
    accepted = []
    for nbf in (_now() - 10.5, "0", str(_now() - 5), True, 1e-300, -1e300):
        token = signed(settings, org="broker-ops", roles=["admin"], nbf=nbf)
        if client.get("/v1/orgs", headers=auth(token)).status_code != 401:
            accepted.append(nbf)
    assert not accepted, accepted


def test_max_ttl_is_configurable_and_enforced(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET), jwt_max_ttl_seconds=120)
    with TestClient(create_app(s)) as c:
        ok = signed(s, org="broker-ops", roles=["admin"], exp=_now() + 120)
        assert c.get("/v1/orgs", headers=auth(ok)).status_code == 200
        long = signed(s, org="broker-ops", roles=["admin"], exp=_now() + 121)
        assert_problem(c.get("/v1/orgs", headers=auth(long)), 401, "unauthenticated")
        # iat backdated to stretch nothing: exp - iat counts, not exp - now
        back = signed(s, org="broker-ops", roles=["admin"], iat=_now() - 100,
                      exp=_now() + 100)
        assert_problem(c.get("/v1/orgs", headers=auth(back)), 401, "unauthenticated")
        # iat post-dated within the leeway buys at most the leeway
        fwd = signed(s, org="broker-ops", roles=["admin"], iat=_now() + 29, exp=_now() + 149)
        assert c.get("/v1/orgs", headers=auth(fwd)).status_code == 200


def test_header_tricks_on_the_dev_secret_are_refused(client: TestClient,
                                                     settings: Settings) -> None:
    claims = token_claims(settings, org="broker-ops", roles=["admin"])
    for header in ({"alg": "none"}, {"alg": "HS256", "crit": ["exp"], "exp": 1},
                   {"alg": "HS256", "b64": False, "crit": ["b64"]}):
        token = raw(claims, header)
        if header["alg"] == "none":
            token = token.rsplit(".", 1)[0] + "."
        assert_problem(client.get("/v1/orgs", headers=auth(token)), 401, "unauthenticated")
    for alg in ("HS384", "HS512"):
        token = jwt.encode(claims, SECRET, algorithm=alg)
        r = client.get("/v1/orgs", headers=auth(token))
        assert r.status_code in (200, 401)  # an allow-listed HMAC of the same secret, if any
    # a JWT in the payload of a JWT
    inner = jwt.encode(claims, SECRET, algorithm="HS256")
    nested = jwt.encode({"token": inner}, SECRET, algorithm="HS256", headers={"cty": "JWT"})
    assert_problem(client.get("/v1/orgs", headers=auth(nested)), 401, "unauthenticated")


# --- OIDC ---------------------------------------------------------------------------------


@pytest.fixture
def oidc_client(tmp_path: Path, oidc_provider: OidcProvider) -> Iterator[TestClient]:
    s = Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET),
                 oidc_issuer=oidc_provider.issuer, oidc_audience="broker",
                 oidc_roles_claim="realm_access.roles")
    with TestClient(create_app(s)) as c:
        yield c


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def _admin_claims(provider: OidcProvider, **extra: Any) -> dict[str, Any]:
    now = _now()
    return {"iss": provider.issuer, "aud": "broker", "sub": "evil", "org": "broker-ops",
            "realm_access": {"roles": ["admin"]}, "iat": now, "exp": now + 300, **extra}


def test_embedded_keys_and_key_urls_in_the_header_are_ignored(
        oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    """A token signed by the attacker's key, pointing at that key via jwk/jku/x5u/x5c, under
    the provider's kid."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": _int_b64(pub.n), "e": _int_b64(pub.e), "kid": "rs256-1"}
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    claims = _admin_claims(oidc_provider)
    for kid in ("rs256-1", "attacker"):
        for extra in ({"jwk": jwk}, {"jku": "http://127.0.0.1:9/jwks"},
                      {"x5u": "http://127.0.0.1:9/cert"}, {"x5c": ["AAAA"]}):
            token = jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid, **extra})
            assert_problem(oidc_client.get("/v1/orgs", headers=auth(token)), 401,
                           "unauthenticated")
    # the dev secret and the provider's public key as an HMAC secret
    token = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "rs256-1"})
    assert_problem(oidc_client.get("/v1/orgs", headers=auth(token)), 401, "unauthenticated")
    dev = mint_token(key=SECRET, issuer="broker", audience="broker", sub="x", org="broker-ops",
                     roles=["admin"])
    assert oidc_client.get("/v1/orgs", headers=auth(dev)).status_code == 401


def test_nested_tokens_from_the_real_provider_are_refused(
        oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    kid = oidc_provider.kids["RS256"]
    good = oidc_provider.token(kid=kid)
    assert oidc_client.get("/v1/orgs", headers=auth(good)).status_code == 200
    # oauth2-mock-server will not sign a crit header (500); see the loopback provider below
    nested = oidc_provider.token(kid=kid, header={"cty": "JWT"},
                                 claims={"org": "broker-ops", "realm_access": {"roles": []},
                                         "token": good})
    assert oidc_client.get("/v1/orgs", headers=auth(nested)).status_code == 401


@pytest.mark.parametrize("kid", [
    "../../../../etc/passwd", "http://127.0.0.1:9/jwks", "rs256-1\x00", "rs256-1 ",
    "RS256-1", "k" * 257, "k" * 5000, "", None, 1, ["rs256-1"], {"kid": "rs256-1"},
])
def test_odd_kids_are_refused_without_hammering_the_provider(
        oidc_client: TestClient, oidc_provider: OidcProvider, kid: Any) -> None:
    token = oidc_provider.token(kid=oidc_provider.kids["RS256"], header={"kid": kid})
    before = oidc_provider.jwks_served()
    for _ in range(5):
        r = oidc_client.get("/v1/orgs", headers=auth(token))
        assert r.status_code == 401, r.text
    assert oidc_provider.jwks_served() - before <= 2


def test_another_providers_token_with_our_issuer_is_refused(
        oidc_client: TestClient, oidc_provider: OidcProvider,
        other_oidc_provider: OidcProvider) -> None:
    for alg, kid in other_oidc_provider.kids.items():
        token = other_oidc_provider.token(kid=kid, claims={
            "iss": oidc_provider.issuer, "org": "broker-ops",
            "realm_access": {"roles": ["admin"]}})
        assert jwt.decode(token, options={"verify_signature": False})["iss"] == \
            oidc_provider.issuer
        assert_problem(oidc_client.get("/v1/orgs", headers=auth(token)), 401,
                       "unauthenticated"), alg


def test_audience_lists_need_the_broker(oidc_client: TestClient,
                                        oidc_provider: OidcProvider) -> None:
    kid = oidc_provider.kids["ES256"]
    without = oidc_provider.token(kid=kid, claims={
        "aud": ["other", "Broker", "broker "], "org": "broker-ops",
        "realm_access": {"roles": ["admin"]}})
    assert oidc_client.get("/v1/orgs", headers=auth(without)).status_code == 401
    with_broker = oidc_provider.token(kid=kid, claims={
        "aud": ["other", "broker"], "org": "broker-ops", "realm_access": {"roles": ["admin"]}})
    TIMINGS["aud-list-with-broker-status"] = oidc_client.get(
        "/v1/orgs", headers=auth(with_broker)).status_code


def test_oidc_lifetimes_and_roles(oidc_client: TestClient,
                                  oidc_provider: OidcProvider) -> None:
    kid = oidc_provider.kids["EdDSA"]
    now = _now()
    for claims in ({"exp": now + 300.5}, {"exp": now + 90 * 86400},
                   {"iat": now - 10 * 86400}, {"nbf": now + 3600},
                   {"realm_access": {"roles": ["Admin", "ADMIN"]}},
                   {"realm_access": {"roles": "admin"}},
                   {"realm_access": [{"roles": ["admin"]}]},
                   {"org": ["broker-ops"]}, {"org": "Broker-Ops"}):
        base = {"org": "broker-ops", "realm_access": {"roles": ["admin"]}}
        token = oidc_provider.token(kid=kid, claims={**base, **claims})
        r = oidc_client.get("/v1/orgs", headers=auth(token))
        assert r.status_code == 401, (claims, r.text)
    # a provider's own roles beside a misfit broker role do not slip through
    token = oidc_provider.token(kid=kid, claims={
        "org": "broker-ops", "realm_access": {"roles": ["admin", "auditor", "offline_access"]}})
    assert_misfit(oidc_client.get("/v1/orgs", headers=auth(token)))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1.nip.io/jwks", "http://localhost.evil.example/jwks",
    "http://127.0.0.1@evil.example/jwks", "http://evil.example#@127.0.0.1/jwks",
    "http://evil.example\\@127.0.0.1/jwks", "http://0.0.0.0/jwks", "http://127.1/jwks",
    "http://[::ffff:127.0.0.1]:80@evil.example/", "file:///etc/passwd",
    "http://2130706433/jwks", "http://169.254.169.254/latest/", "gopher://127.0.0.1/",
    "http://evil.example/jwks", "HTTP://evil.example/jwks",
])
def test_off_loopback_key_urls_are_refused(url: str) -> None:
    assert issuer_url_problem(url) is not None, url


class _Discovery(BaseHTTPRequestHandler):
    jwks_uri = ""
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        issuer = f"http://127.0.0.1:{self.server.server_port}"  # type: ignore[attr-defined]
        body = json.dumps({"issuer": issuer, "jwks_uri": type(self).jwks_uri}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("jwks_uri", ["http://evil.example/jwks", "http://10.0.0.1/jwks",
                                      "http://127.0.0.1.nip.io/jwks"])
def test_a_discovery_document_pointing_keys_off_loopback_fails_closed(
        tmp_path: Path, jwks_uri: str) -> None:
    _Discovery.jwks_uri, _Discovery.hits = jwks_uri, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        issuer = f"http://127.0.0.1:{server.server_address[1]}"
        s = Settings(data_dir=tmp_path / "var", oidc_issuer=issuer, oidc_audience="broker")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        now = _now()
        token = jwt.encode({"iss": issuer, "aud": "broker", "sub": "x", "org": "broker-ops",
                            "roles": ["admin"], "iat": now, "exp": now + 60}, pem,
                           algorithm="RS256", headers={"kid": "k"})
        with TestClient(create_app(s)) as c:
            t0 = time.monotonic()
            r = c.get("/v1/orgs", headers=auth(token))
            assert r.status_code == 503, r.text
            assert time.monotonic() - t0 < 5
        assert _Discovery.hits == ["/.well-known/openid-configuration"]
    finally:
        server.shutdown()


class _Provider(BaseHTTPRequestHandler):
    """A minimal OIDC provider on loopback whose keys the test holds (to sign what
    oauth2-mock-server refuses to: crit headers, HMAC under an ``oct`` key of the set)."""

    jwks: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        issuer = f"http://127.0.0.1:{self.server.server_port}"  # type: ignore[attr-defined]
        doc = ({"issuer": issuer, "jwks_uri": issuer + "/jwks"}
               if self.path.endswith("openid-configuration") else type(self).jwks)
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_crit_headers_and_symmetric_keys_of_a_loopback_provider_are_refused(
        tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    secret = b"s" * 64
    _Provider.jwks = {"keys": [
        {"kty": "RSA", "kid": "r", "n": _int_b64(pub.n), "e": _int_b64(pub.e)},
        {"kty": "oct", "kid": "o", "k": _b64(secret)},
        {"kty": "RSA", "kid": "r512", "alg": "RS512", "n": _int_b64(pub.n),
         "e": _int_b64(pub.e)},
    ]}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        issuer = f"http://127.0.0.1:{server.server_address[1]}"
        s = Settings(data_dir=tmp_path / "var", oidc_issuer=issuer, oidc_audience="broker")
        now = _now()
        claims = {"iss": issuer, "aud": "broker", "sub": "x", "org": "broker-ops",
                  "roles": ["admin"], "iat": now, "exp": now + 60}
        with TestClient(create_app(s)) as c:
            good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "r"})
            assert c.get("/v1/orgs", headers=auth(good)).status_code == 200
            bad = [
                jwt.encode(claims, key, algorithm="RS256",
                           headers={"kid": "r", "crit": ["urn:x"], "urn:x": 1}),
                jwt.encode(claims, key, algorithm="RS256",
                           headers={"kid": "r", "crit": ["b64"], "b64": True}),
                jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "o"}),
                jwt.encode(claims, key, algorithm="RS512", headers={"kid": "r512"}),
                jwt.encode(claims, key, algorithm="RS512", headers={"kid": "r"}),
                jwt.encode(claims, key, algorithm="PS256", headers={"kid": "r"}),
                jwt.encode({**claims, "iss": issuer + "/"}, key, algorithm="RS256",
                           headers={"kid": "r"}),
            ]
            for i, token in enumerate(bad):
                r = c.get("/v1/orgs", headers=auth(token))
                assert r.status_code == 401, (i, r.text)
    finally:
        server.shutdown()
