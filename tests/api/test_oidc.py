"""OIDC: tokens of a real provider on loopback (tests/oidc), through the whole app.

The provider is oauth2-mock-server (``tests.oidc_provider``); every token here comes from its
``/token`` endpoint over HTTP, and the broker fetches its discovery document and keys over
HTTP. The callers are admins of the operator organisation ``broker-ops``, which exists without
registration, so these tests do not depend on which roles an organisation's kind allows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from broker.api.auth import mint_token
from broker.api.oidc import OidcVerifier
from broker.app import create_app
from broker.cli import app as cli
from broker.cli.serving import free_port
from broker.domain.principals import Role
from broker.settings import Settings
from tests.conftest import SECRET, assert_problem, auth
from tests.oidc_provider import OidcProvider, running_provider
from tests.server import broker_server

ALGORITHMS = ("RS256", "ES256", "EdDSA")
ROUTE = "/v1/orgs"  # cheap, and any authenticated caller may list


def oidc_settings(tmp_path: Path, issuer: str, **overrides: Any) -> Settings:
    """Settings trusting ``issuer`` for audience ``broker``, Keycloak's roles claim, and a
    dev secret configured too (which must make no difference)."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "var", "jwt_secret": SECRET, "oidc_issuer": issuer,
        "oidc_audience": "broker", "oidc_roles_claim": "realm_access.roles",
    }
    return Settings(**(values | overrides))


@pytest.fixture
def oidc_client(tmp_path: Path, oidc_provider: OidcProvider) -> Iterator[TestClient]:
    """The app trusting ``oidc_provider``."""
    with TestClient(create_app(oidc_settings(tmp_path, oidc_provider.issuer))) as c:
        yield c


def verifier_of(client: TestClient) -> OidcVerifier:
    """The app's OIDC verifier (to read its cache or set its clock)."""
    tokens = client.app.state.container.tokens  # type: ignore[attr-defined]
    assert isinstance(tokens, OidcVerifier)
    return tokens


def b64(data: bytes) -> str:
    """base64url without padding, as in a JWS."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(provider: OidcProvider, **overrides: Any) -> dict[str, Any]:
    """Valid claims for the broker from ``provider``, with ``overrides``."""
    now = int(time.time())
    return {"iss": provider.issuer, "aud": "broker", "sub": "ops@broker-ops",
            "org": "broker-ops", "realm_access": {"roles": ["admin"]}, "iat": now,
            "exp": now + 300} | overrides


# --- accepted -----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_token_of_the_provider_is_accepted_for_each_algorithm(
        oidc_client: TestClient, oidc_provider: OidcProvider, alg: str) -> None:
    token = oidc_provider.token(kid=oidc_provider.kids[alg])
    assert jwt.get_unverified_header(token)["alg"] == alg
    r = oidc_client.get(ROUTE, headers=auth(token))
    assert r.status_code == 200, r.text


def test_the_principal_names_the_issuer_and_only_the_broker_roles(
        oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    token = oidc_provider.token(kid="eddsa-1", sub="alice", claims={
        "org": "broker-ops",
        "realm_access": {"roles": ["offline_access", "uma_authorization", "admin", "auditor"]}})
    principal = verifier_of(oidc_client).verify(token)
    assert principal.iss == oidc_provider.issuer
    assert principal.sub == "alice"
    assert principal.org == "broker-ops"
    assert principal.roles == {Role.ADMIN, Role.AUDITOR}


def test_the_roles_and_org_claims_follow_the_configured_paths(
        tmp_path: Path, oidc_provider: OidcProvider) -> None:
    settings = oidc_settings(tmp_path, oidc_provider.issuer, oidc_roles_claim="roles",
                             oidc_org_claim="tenant.org")
    token = oidc_provider.token(kid="rs256-1", claims={
        "tenant": {"org": "broker-ops"}, "roles": ["admin"]})
    keycloak_shaped = oidc_provider.token(kid="rs256-1")  # roles at realm_access.roles
    with TestClient(create_app(settings)) as client:
        assert client.get(ROUTE, headers=auth(token)).status_code == 200
        assert_problem(client.get(ROUTE, headers=auth(keycloak_shaped)), 401,
                       "unauthenticated")


def test_the_broker_starts_and_is_ready_while_the_provider_is_down(tmp_path: Path) -> None:
    settings = oidc_settings(tmp_path, f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


@pytest.mark.e2e
def test_a_real_server_accepts_the_providers_token(
        tmp_path: Path, oidc_provider: OidcProvider) -> None:
    env = {"BROKER_DATA_DIR": str(tmp_path / "var"), "BROKER_OIDC_ISSUER": oidc_provider.issuer,
           "BROKER_OIDC_AUDIENCE": "broker", "BROKER_OIDC_ROLES_CLAIM": "realm_access.roles"}
    with broker_server(tmp_path, env, unset=("BROKER_JWT_SECRET",)) as base:
        token = oidc_provider.token(kid="es256-1")
        assert httpx.get(base + ROUTE, headers=auth(token), timeout=10).status_code == 200
        dev = mint_token(key=SECRET, issuer="broker-dev", audience="broker",
                         sub="ops", org="broker-ops", roles=["admin"])
        r = httpx.get(base + ROUTE, headers=auth(dev), timeout=10)
        assert_problem(r, 401, "unauthenticated")
    assert not (tmp_path / "var" / "keys" / "jwt-secret").exists()


# --- keys: rotation, unknown kids, the re-fetch budget --------------------------------------


def test_a_rotated_key_is_accepted_without_a_restart(
        oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    clock = [0.0]
    verifier_of(oidc_client).keys.now = lambda: clock[0]
    assert oidc_client.get(ROUTE, headers=auth(oidc_provider.token(kid="rs256-1"))).status_code \
        == 200
    kid = f"rotated-{uuid.uuid4().hex[:8]}"
    oidc_provider.command("generate", alg="ES256", kid=kid)
    clock[0] += 60  # later, but well within the cache time
    before = oidc_provider.jwks_served()
    r = oidc_client.get(ROUTE, headers=auth(oidc_provider.token(kid=kid)))
    assert r.status_code == 200, r.text
    assert oidc_provider.jwks_served() == before + 1  # one re-fetch for the new kid
    oidc_provider.command("retire", kid=kid)


def test_unknown_kids_refetch_the_key_set_at_most_once_a_second(
        oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    keys = verifier_of(oidc_client).keys
    clock = [1000.0]
    keys.now = lambda: clock[0]
    assert oidc_client.get(ROUTE, headers=auth(oidc_provider.token(kid="rs256-1"))).status_code \
        == 200
    start = oidc_provider.jwks_served()

    def bogus(i: int) -> str:
        return oidc_provider.token(kid="rs256-1", header={"kid": f"bogus-{i}"})

    for i in range(20):  # a flood within the same second: no fetch at all
        assert_problem(oidc_client.get(ROUTE, headers=auth(bogus(i))), 401, "unauthenticated")
    assert oidc_provider.jwks_served() == start
    clock[0] += 1.0
    for i in range(20):  # a second later: one fetch, then the cache answers again
        assert_problem(oidc_client.get(ROUTE, headers=auth(bogus(i))), 401, "unauthenticated")
    assert oidc_provider.jwks_served() == start + 1

    # a key the provider signs with before it publishes it: refused, then accepted once it is
    # published and a second has passed
    kid = f"early-{uuid.uuid4().hex[:8]}"
    oidc_provider.command("generate", alg="EdDSA", kid=kid, publish=False)
    early = oidc_provider.token(kid=kid)
    clock[0] += 1.0
    assert_problem(oidc_client.get(ROUTE, headers=auth(early)), 401, "unauthenticated")
    oidc_provider.command("publish", kid=kid)
    clock[0] += 0.5
    assert_problem(oidc_client.get(ROUTE, headers=auth(early)), 401, "unauthenticated")
    assert oidc_provider.jwks_served() == start + 2
    clock[0] += 0.5
    assert oidc_client.get(ROUTE, headers=auth(early)).status_code == 200
    assert oidc_provider.jwks_served() == start + 3
    oidc_provider.command("retire", kid=kid)


def test_keys_are_fetched_again_after_the_cache_time(
        oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    keys = verifier_of(oidc_client).keys
    clock = [0.0]
    keys.now = lambda: clock[0]
    token = oidc_provider.token(kid="es256-1")
    assert oidc_client.get(ROUTE, headers=auth(token)).status_code == 200
    start = oidc_provider.jwks_served()
    clock[0] += 299
    assert oidc_client.get(ROUTE, headers=auth(token)).status_code == 200
    assert oidc_provider.jwks_served() == start
    clock[0] += 1  # BROKER_OIDC_JWKS_CACHE_SECONDS (300) after the fetch
    assert oidc_client.get(ROUTE, headers=auth(token)).status_code == 200
    assert oidc_provider.jwks_served() == start + 1


def test_a_retired_key_is_refused_once_the_cache_expires(
        oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    keys = verifier_of(oidc_client).keys
    clock = [0.0]
    keys.now = lambda: clock[0]
    kid = f"retiring-{uuid.uuid4().hex[:8]}"
    oidc_provider.command("generate", alg="RS256", kid=kid)
    token = oidc_provider.token(kid=kid)
    assert oidc_client.get(ROUTE, headers=auth(token)).status_code == 200
    oidc_provider.command("retire", kid=kid)
    clock[0] += 300
    assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")


@pytest.mark.parametrize("header", [{"kid": "nobody"}, {"kid": None}, {"kid": 7}])
def test_a_token_naming_an_unknown_or_no_kid_is_401(
        oidc_client: TestClient, oidc_provider: OidcProvider, header: dict[str, Any]) -> None:
    token = oidc_provider.token(kid="rs256-1", header=header)
    assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")


# --- issuer and audience --------------------------------------------------------------------


@pytest.mark.parametrize("iss", ["https://evil.example", "http://127.0.0.1:1", None])
def test_a_token_naming_another_or_no_issuer_is_401(
        oidc_client: TestClient, oidc_provider: OidcProvider, iss: str | None) -> None:
    claims = claims_of(oidc_provider, iss=iss)
    token = oidc_provider.token(kid="rs256-1", claims=claims)
    assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")


def test_a_token_of_another_provider_is_401_even_naming_this_issuer(
        oidc_client: TestClient, oidc_provider: OidcProvider,
        other_oidc_provider: OidcProvider) -> None:
    for alg in ALGORITHMS:
        kid = other_oidc_provider.kids[alg]  # the same kid as this provider's, another key
        own_iss = other_oidc_provider.token(kid=kid)
        forged_iss = other_oidc_provider.token(kid=kid, claims=claims_of(oidc_provider))
        for token in (own_iss, forged_iss):
            assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")


def test_a_discovery_document_naming_another_issuer_is_503(
        tmp_path: Path, oidc_provider: OidcProvider) -> None:
    # configured with a trailing slash: the provider's document names the issuer without one
    settings = oidc_settings(tmp_path, oidc_provider.issuer + "/")
    with TestClient(create_app(settings)) as client:
        token = oidc_provider.token(kid="rs256-1", claims=claims_of(
            oidc_provider, iss=oidc_provider.issuer + "/"))
        body = assert_problem(client.get(ROUTE, headers=auth(token)), 503, "unavailable")
        assert "another issuer" in body["detail"]


@pytest.mark.parametrize("audience", ["someone-else", None])
def test_a_token_for_another_or_no_audience_is_401(
        oidc_client: TestClient, oidc_provider: OidcProvider, audience: str | None) -> None:
    token = oidc_provider.token(kid="es256-1", audience=audience)
    assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")


def test_a_token_whose_audiences_include_the_broker_is_accepted(
        oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    token = oidc_provider.token(kid="es256-1", claims=claims_of(
        oidc_provider, aud=["account", "broker"]))
    assert oidc_client.get(ROUTE, headers=auth(token)).status_code == 200


# --- algorithms ------------------------------------------------------------------------------


def hs256_with_the_public_key(provider: OidcProvider, kid: str, pem: bytes) -> str:
    """The classic confusion attack: HS256 "signed" with the RSA public key as the secret."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims_of(provider)).encode())
    mac = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(mac)}"


def test_an_hs256_token_signed_with_the_public_key_is_401(
        oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    jwk = next(k for k in oidc_provider.jwks()["keys"] if k["kid"] == "rs256-1")
    public = jwt.PyJWK(jwk).key
    for encoding, fmt in ((serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo),
                          (serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)):
        token = hs256_with_the_public_key(oidc_provider, "rs256-1",
                                          public.public_bytes(encoding, fmt))
        assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")
    # and with the JWK's own JSON as the secret
    token = hs256_with_the_public_key(oidc_provider, "rs256-1", json.dumps(jwk).encode())
    assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_an_unsigned_token_is_401(
        oidc_client: TestClient, oidc_provider: OidcProvider, alg: str) -> None:
    header = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "rs256-1"}).encode())
    body = b64(json.dumps(claims_of(oidc_provider)).encode())
    assert_problem(oidc_client.get(ROUTE, headers=auth(f"{header}.{body}.")), 401,
                   "unauthenticated")


@pytest.mark.parametrize(("signer", "named"), [
    ("es256-1", "rs256-1"),  # ES256 header on the RSA key
    ("rs256-1", "es256-1"),  # RS256 header on the P-256 key
    ("eddsa-1", "es256-1"),
    ("es256-1", "eddsa-1"),
])
def test_a_token_whose_algorithm_does_not_fit_the_named_key_is_401(
        oidc_client: TestClient, oidc_provider: OidcProvider, signer: str, named: str) -> None:
    token = oidc_provider.token(kid=signer, header={"kid": named})
    assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")


def test_the_dev_hs256_token_is_refused_when_oidc_is_configured(
        tmp_path: Path, oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    for issuer in ("broker-dev", oidc_provider.issuer):
        dev = mint_token(key=SECRET, issuer=issuer, audience="broker", sub="ops",
                         org="broker-ops", roles=["admin"])
        assert_problem(oidc_client.get(ROUTE, headers=auth(dev)), 401, "unauthenticated")
    assert not (tmp_path / "var" / "keys" / "jwt-secret").exists()


# --- lifetime and claims ---------------------------------------------------------------------


def test_an_expired_token_is_401(oidc_client: TestClient, oidc_provider: OidcProvider) -> None:
    token = oidc_provider.token(kid="eddsa-1", expires_in=-120)
    body = assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")
    assert "expired" in body["detail"]


@pytest.mark.parametrize("overrides", [
    {"exp": int(time.time()) + 2 * 86_400},  # longer than BROKER_JWT_MAX_TTL_SECONDS
    {"exp": int(time.time()) + 300.5},  # NumericDates are integers
    {"iat": int(time.time()) - 0.5},  # (a whole float would reach us as an integer via JS)
    {"exp": str(int(time.time()) + 300)},
    {"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200},
    {"realm_access": {"roles": ["offline_access", "uma_authorization"]}},  # no broker role
    {"realm_access": {"roles": "admin"}},
    {"realm_access": None},
    {"org": "Not An Org!"},
    {"org": None},
    {"sub": ""},
])
def test_a_token_with_bad_claims_is_401(
        oidc_client: TestClient, oidc_provider: OidcProvider,
        overrides: dict[str, Any]) -> None:
    claims = {k: v for k, v in claims_of(oidc_provider, **overrides).items() if v is not None}
    token = oidc_provider.token(kid="rs256-1", claims=claims)
    assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")


# --- the provider down ------------------------------------------------------------------------


def test_an_unreachable_provider_is_a_503_problem_not_500(
        tmp_path: Path, oidc_provider: OidcProvider) -> None:
    issuer = f"http://127.0.0.1:{free_port()}"
    settings = oidc_settings(tmp_path, issuer)
    token = oidc_provider.token(kid="rs256-1", claims=claims_of(oidc_provider, iss=issuer))
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            body = assert_problem(client.get(ROUTE, headers=auth(token)), 503, "unavailable")
            assert "identity provider" in body["detail"]


def test_a_provider_going_down_keeps_cached_keys_and_503s_tokens_that_need_a_fetch(
        tmp_path: Path) -> None:
    with running_provider() as provider:
        settings = oidc_settings(tmp_path, provider.issuer)
        with TestClient(create_app(settings)) as client:
            clock = [0.0]
            verifier_of(client).keys.now = lambda: clock[0]
            token = provider.token(kid="rs256-1")
            assert client.get(ROUTE, headers=auth(token)).status_code == 200
            provider.command("generate", alg="ES256", kid="es256-2", publish=False)
            fresh = provider.token(kid="es256-2")
            provider.stop()
            clock[0] += 10
            assert client.get(ROUTE, headers=auth(token)).status_code == 200  # cached
            assert_problem(client.get(ROUTE, headers=auth(fresh)), 503, "unavailable")
            clock[0] += 300  # the cache has expired: every token needs a fetch
            assert_problem(client.get(ROUTE, headers=auth(token)), 503, "unavailable")


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("issuer", [
    "http://idp.example", "http://10.0.0.7:8080/realms/broker", "http://127.0.0.1.nip.io",
    "ftp://127.0.0.1", "https://idp.example/realms/x?debug=1", "https://user:pw@idp.example",
    "idp.example", "",
])
def test_an_issuer_that_is_not_https_or_loopback_http_is_refused(tmp_path: Path,
                                                                 issuer: str) -> None:
    with pytest.raises(ValidationError, match="BROKER_OIDC_ISSUER"):
        oidc_settings(tmp_path, issuer)


@pytest.mark.parametrize("issuer", [
    "https://idp.example/realms/broker", "http://127.0.0.1:8080", "http://[::1]:8080/x",
    "http://localhost:8080/realms/broker",
])
def test_https_and_loopback_http_issuers_are_accepted(tmp_path: Path, issuer: str) -> None:
    assert oidc_settings(tmp_path, issuer).oidc_issuer == issuer


def test_an_issuer_without_an_audience_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="BROKER_OIDC_AUDIENCE"):
        oidc_settings(tmp_path, "https://idp.example", oidc_audience=None)


def test_broker_serve_refuses_to_start_with_an_http_issuer_off_loopback(tmp_path: Path) -> None:
    env = os.environ | {"BROKER_DATA_DIR": str(tmp_path / "var"),
                        "BROKER_OIDC_ISSUER": "http://idp.example/realms/broker",
                        "BROKER_OIDC_AUDIENCE": "broker"}
    done = subprocess.run([sys.executable, "-m", "broker", "serve", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "error: Value error, BROKER_OIDC_ISSUER: http is accepted on loopback only" \
        in done.stderr
    assert "Traceback" not in done.stderr


def test_broker_token_refuses_to_mint_when_oidc_is_configured(tmp_path: Path) -> None:
    env = {"BROKER_DATA_DIR": str(tmp_path / "var"), "BROKER_OIDC_ISSUER": "https://idp.example",
           "BROKER_OIDC_AUDIENCE": "broker"}
    result = CliRunner().invoke(cli, ["token", "--sub", "a", "--org", "broker-ops",
                                      "--role", "admin"], env=env)
    assert result.exit_code == 1
    assert result.stdout.strip() == ""
    assert "BROKER_OIDC_ISSUER is set" in result.stderr
    assert not (tmp_path / "var" / "keys" / "jwt-secret").exists()


# --- only access tokens -----------------------------------------------------------------------


@pytest.mark.parametrize(("header", "claims"), [
    ({"typ": "JWT"}, {}), ({"typ": "at+jwt"}, {}), ({}, {"typ": "Bearer"})])
def test_access_tokens_are_accepted(
        oidc_client: TestClient, oidc_provider: OidcProvider, header: dict[str, Any],
        claims: dict[str, Any]) -> None:
    token = oidc_provider.token(kid="rs256-1", header=header,
                                claims=claims_of(oidc_provider, **claims))
    assert oidc_client.get(ROUTE, headers=auth(token)).status_code == 200


@pytest.mark.parametrize(("header", "claims"), [
    ({}, {"typ": "ID"}), ({}, {"typ": "Refresh"}), ({}, {"typ": 1}),
    ({"typ": "dpop+jwt"}, {}), ({"typ": "secevent+jwt"}, {}), ({"typ": ["JWT"]}, {})])
def test_id_refresh_and_other_tokens_are_401(
        oidc_client: TestClient, oidc_provider: OidcProvider, header: dict[str, Any],
        claims: dict[str, Any]) -> None:
    token = oidc_provider.token(kid="rs256-1", header=header,
                                claims=claims_of(oidc_provider, **claims))
    assert_problem(oidc_client.get(ROUTE, headers=auth(token)), 401, "unauthenticated")
