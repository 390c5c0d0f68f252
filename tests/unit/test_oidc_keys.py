"""The OIDC key set: which published keys count, and how often the provider is asked.

The provider here is in process (an httpx mock transport); tests/api/test_oidc.py runs the
same verifier against a real provider on loopback.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from broker.api.oidc import OidcVerifier, signing_keys
from broker.domain.errors import Unauthenticated

ISSUER = "https://idp.example/realms/broker"


def public_jwk(key: Any, family: str, **members: Any) -> dict[str, Any]:
    """The JWK of ``key``'s public half (``family``: an algorithm of its type), with
    ``members`` added."""
    jwk: dict[str, Any] = json.loads(jwt.get_algorithm_by_name(family).to_jwk(key.public_key()))
    return jwk | members


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
ED = ed25519.Ed25519PrivateKey.generate()


def test_only_signature_keys_of_the_allowed_types_are_kept() -> None:
    keys = signing_keys({"keys": [
        public_jwk(RSA, "RS256", kid="rsa"),
        public_jwk(P256, "ES256", kid="p256", alg="ES256", use="sig"),
        public_jwk(ED, "EdDSA", kid="ed"),
        public_jwk(RSA, "RS256", kid="rsa-enc", use="enc", alg="RSA-OAEP"),  # Keycloak's
        public_jwk(RSA, "RS256", kid="rsa-512", alg="RS512"),
        public_jwk(P384, "ES384", kid="p384"),
        public_jwk(P256, "ES256", kid="p256-as-rs", alg="RS256"),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
        public_jwk(RSA, "RS256"),  # no kid
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "not a key",
    ]})
    assert {kid: k.algorithm for kid, k in keys.items()} == {
        "rsa": "RS256", "p256": "ES256", "ed": "EdDSA"}


@pytest.mark.parametrize("document", [None, [], {"keys": "x"}, {"nokeys": []}])
def test_a_document_that_is_not_a_key_set_is_refused(document: object) -> None:
    with pytest.raises(ValueError, match="JWK Set"):
        signing_keys(document)


class Provider:
    """An in-process provider counting its key set requests (optionally slow)."""

    def __init__(self, jwks: dict[str, Any], delay: float = 0.0) -> None:
        self.jwks = jwks
        self.delay = delay
        self.served = 0
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": ISSUER + "/certs"})
        with self.lock:
            self.served += 1
        time.sleep(self.delay)
        return httpx.Response(200, json=self.jwks)


def token(key: Any, alg: str, kid: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": "broker", "sub": "ops", "org": "broker-ops",
                       "roles": ["admin"], "iat": now, "exp": now + 300}, key, algorithm=alg,
                      headers={"kid": kid})


def test_an_hmac_token_naming_a_symmetric_key_of_the_set_is_refused() -> None:
    secret = "secret-secret-secret-secret-secret-secret"
    provider = Provider({"keys": [{"kty": "oct", "kid": "hmac", "alg": "HS256", "k": jwt.utils
                                   .base64url_encode(secret.encode()).decode()}]})
    verifier = OidcVerifier(issuer=ISSUER, audience="broker",
                            http=httpx.Client(transport=httpx.MockTransport(provider)))
    with pytest.raises(Unauthenticated, match="algorithm"):
        verifier.verify(token(secret, "HS256", "hmac"))
    assert provider.served == 0  # refused before any fetch


def test_a_deeply_nested_header_is_refused_as_invalid_not_an_internal_error() -> None:
    provider = Provider({"keys": [public_jwk(ED, "EdDSA", kid="ed")]})
    verifier = OidcVerifier(issuer=ISSUER, audience="broker",
                            http=httpx.Client(transport=httpx.MockTransport(provider)))
    head = jwt.utils.base64url_encode(b"[" * 3000 + b"]" * 3000).decode()
    with pytest.raises(Unauthenticated, match="not valid"):
        verifier.verify(f"{head}.e30.c2ln")
    assert provider.served == 0


def test_concurrent_requests_with_a_new_kid_cause_one_fetch() -> None:
    provider = Provider({"keys": [public_jwk(ED, "EdDSA", kid="ed")]}, delay=0.2)
    verifier = OidcVerifier(issuer=ISSUER, audience="broker",
                            http=httpx.Client(transport=httpx.MockTransport(provider)))
    value = token(ED, "EdDSA", "ed")
    results: list[str] = []

    def call() -> None:
        results.append(verifier.verify(value).org)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["broker-ops"] * 16
    assert provider.served == 1
