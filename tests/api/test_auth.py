"""Authentication: every bad token is a 401 problem; a wrong role is a 403 problem."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from fastapi.testclient import TestClient

from broker.settings import Settings
from tests.conftest import SECRET, Mint, World, assert_problem, auth, token_claims


def test_missing_token_is_401_problem_with_bearer_challenge(client: TestClient) -> None:
    r = client.get("/v1/datasets")
    assert_problem(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 3600},  # expired
        {"exp": None},  # exp missing
        {"aud": "someone-else"},
        {"iss": "evil-issuer"},
        {"roles": ["superuser"]},
        {"roles": "consumer"},
        {"roles": []},
        {"org": "Not An Org!"},
        {"sub": None},
        # lifetimes (issue 18): longer than BROKER_JWT_MAX_TTL_SECONDS, absurd, or not numbers
        {"exp": int(time.time()) + 100 * 365 * 86400},
        {"exp": 1e300},
        {"exp": 10**400},
        {"exp": str(int(time.time()) + 300)},
        {"iat": str(int(time.time()))},
        {"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200},  # issued later
        {"iat": None},
        {"exp": True},
        # NumericDates are integers: fractions are refused (issue 18)
        {"exp": float(int(time.time()) + 300)},
        {"exp": int(time.time()) + 300.5},
        {"iat": float(int(time.time()))},
    ],
)
def test_token_with_bad_claims_is_401(client: TestClient, settings: Settings,
                                      overrides: dict[str, object]) -> None:
    token = jwt.encode(token_claims(settings, **overrides), SECRET, algorithm="HS256")
    assert_problem(client.get("/v1/datasets", headers=auth(token)), 401, "unauthenticated")


def test_token_signed_with_another_secret_is_401(client: TestClient, settings: Settings) -> None:
    token = jwt.encode(token_claims(settings), "another-secret-another-secret-another", "HS256")
    assert_problem(client.get("/v1/datasets", headers=auth(token)), 401, "unauthenticated")


def test_unsigned_alg_none_token_is_401(client: TestClient, settings: Settings) -> None:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(token_claims(settings)).encode())
    assert_problem(client.get("/v1/datasets", headers=auth(f"{header}.{body}.")), 401,
                   "unauthenticated")


def test_algorithm_outside_the_allow_list_is_401(client: TestClient, settings: Settings) -> None:
    token = jwt.encode(token_claims(settings), SECRET, algorithm="HS512")
    assert_problem(client.get("/v1/datasets", headers=auth(token)), 401, "unauthenticated")


def test_garbage_and_huge_tokens_are_401(client: TestClient) -> None:
    assert_problem(client.get("/v1/datasets", headers=auth("not.a.jwt")), 401, "unauthenticated")
    assert_problem(client.get("/v1/datasets", headers=auth("x" * 9000)), 401, "unauthenticated")
    r = client.get("/v1/datasets", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_problem(r, 401, "unauthenticated")


def test_wrong_role_is_403_problem_with_reasons(world: World, mint: Mint) -> None:
    r = world.client.post("/v1/orgs", headers=auth(mint("econ", "consumer")),
                    json={"id": "x1", "name": "X", "kind": "enterprise"})
    body = assert_problem(r, 403, "policy-denied")
    assert body["reasons"] == ["role-not-permitted"]


def test_openapi_declares_bearer_auth_and_401(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert any(s.get("scheme") == "bearer" for s in spec["components"]["securitySchemes"].values())
    aggregate = spec["paths"]["/v1/queries/aggregate"]["post"]
    assert "401" in aggregate["responses"]
    assert "403" in aggregate["responses"]
    assert aggregate["security"]


def test_a_token_up_to_the_maximum_lifetime_is_accepted(world: World,
                                                        settings: Settings) -> None:
    client = world.client
    now = int(time.time())
    for exp in (now + settings.jwt_max_ttl_seconds, now + 60):
        token = jwt.encode(token_claims(settings, iat=now, exp=exp), SECRET, algorithm="HS256")
        assert client.get("/v1/datasets", headers=auth(token)).status_code == 200
    token = jwt.encode(token_claims(settings, iat=now, exp=now + settings.jwt_max_ttl_seconds
                                    + 1), SECRET, algorithm="HS256")
    body = assert_problem(client.get("/v1/datasets", headers=auth(token)), 401,
                          "unauthenticated")
    assert "longer than" in body["detail"]
