"""Tokens of an OIDC provider: discovery, a cached JWKS, and the broker's claim rules.

``OidcVerifier.verify`` answers like the dev ``TokenVerifier`` (``broker.api.auth``): the
principal a valid token names, ``Unauthenticated`` (401) for anything else. It differs in where
the keys come from and which algorithms count:

- The provider's discovery document (``{issuer}/.well-known/openid-configuration``) is fetched
  lazily, with the first token that needs it, so the broker starts while the provider is down;
  its ``issuer`` must equal the configured one exactly (OpenID Connect Discovery 1.0, 4.3), and
  its ``jwks_uri`` is held to the same https-or-loopback rule as the issuer.
- Keys come from the JWKS and are used for ``cache_seconds``. A token whose ``kid`` is not
  among them makes the broker fetch the set again, at most once per ``refetch_seconds``
  (a provider's key rotation needs no restart; a flood of invented ``kid`` values costs the
  provider one request a second, the rest are refused from the cache).
- Only RS256, ES256 and EdDSA, and each key is bound to one algorithm by its type and curve
  (RSA: RS256, EC P-256: ES256, OKP Ed25519: EdDSA); the token's ``alg`` must be that one.
  An HMAC token (the dev secret, or the public key used as an HMAC secret), ``none``, or an
  RS256 header on an EC key is refused before any signature is computed (RFC 8725, 3.1).
  Symmetric (``oct``) and encryption keys in the set are never used.
- If the provider cannot be reached when a token needs a fetch, the answer is 503
  ``Unavailable`` (fail closed), never 500, and the attempt counts against the once-a-second
  budget, so a down provider is not hammered either.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from jwt import PyJWK

from broker.api.auth import MAX_TOKEN_BYTES, decode_claims, org_of, subject_of
from broker.domain.errors import Unauthenticated, Unavailable
from broker.domain.principals import Principal, Role
from broker.settings import Settings, issuer_url_problem

#: The algorithms an OIDC token may use, each with the key type (and curve) it needs.
KEY_ALGORITHMS: Mapping[tuple[str, str | None], str] = {
    ("RSA", None): "RS256",
    ("EC", "P-256"): "ES256",
    ("OKP", "Ed25519"): "EdDSA",
}
ALLOWED_ALGORITHMS = frozenset(KEY_ALGORITHMS.values())
#: JOSE ``typ`` headers of access tokens (RFC 9068; plain ``JWT`` as most providers send).
ACCESS_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
#: A discovery document or key set larger than this is refused (real ones are a few KiB).
MAX_DOCUMENT_BYTES = 512 * 1024
WELL_KNOWN = "/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One verification key of the provider, bound to the one algorithm it may verify."""

    kid: str
    algorithm: str
    jwk: PyJWK


def signing_keys(jwks: object) -> dict[str, SigningKey]:
    """The usable keys of a JWK Set by ``kid``: signature keys of an allowed type and curve,
    with a ``kid``, whose declared ``alg`` (if any) is the one their type allows; every other
    key (``oct``, encryption, RS512, P-384, unparsable) is skipped, not an error."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWK Set")
    keys: dict[str, SigningKey] = {}
    for data in jwks["keys"]:
        if not isinstance(data, dict):
            continue
        kid, kty, crv = data.get("kid"), data.get("kty"), data.get("crv")
        algorithm = KEY_ALGORITHMS.get((str(kty), None if kty == "RSA" else str(crv)))
        if (not isinstance(kid, str) or not kid or algorithm is None
                or data.get("use", "sig") != "sig" or data.get("alg", algorithm) != algorithm):
            continue
        try:
            keys[kid] = SigningKey(kid, algorithm, PyJWK(data, algorithm))
        except jwt.PyJWTError:
            continue
    return keys


class JwksCache:
    """The provider's discovery document and keys, fetched when needed, safe across threads.

    Fetches happen under one lock, so concurrent requests with the same new ``kid`` cause one
    fetch; ``now`` is a monotonic clock (injectable for tests)."""

    def __init__(
        self,
        *,
        issuer: str,
        http: httpx.Client,
        cache_seconds: float,
        refetch_seconds: float = 1.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.http = http
        self.cache_seconds = cache_seconds
        self.refetch_seconds = refetch_seconds
        self.now = now
        self._lock = threading.Lock()
        self._jwks_uri: str | None = None
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # the last successful fetch
        self._attempted_at: float | None = None  # the last fetch tried, successful or not
        self._failure: str | None = None  # why the last attempt failed, if it did
        self.attempts = 0  # fetches tried, for tests and the benchmark

    def key(self, kid: str) -> SigningKey | None:
        """The provider's key ``kid``, fetching the set if the cache is stale or the key is
        new (at most once per ``refetch_seconds``); None if the provider does not publish it.
        Raises Unavailable when a needed fetch fails."""
        keys = self._keys  # the common case, without the lock: a fresh set holding the key
        if kid in keys and self._is_fresh():
            return keys[kid]
        with self._lock:
            if self._is_fresh():
                found = self._keys.get(kid)
                if found is not None or not self._may_fetch():
                    return found
            elif not self._may_fetch():
                # stale or never fetched, and the last attempt (within the interval) failed
                raise Unavailable("The identity provider is unavailable: "
                                  f"{self._failure or 'no keys fetched yet'}.")
            self._refresh()
            return self._keys.get(kid)

    def _is_fresh(self) -> bool:
        return (self._fetched_at is not None
                and self.now() - self._fetched_at < self.cache_seconds)

    def _may_fetch(self) -> bool:
        return (self._attempted_at is None
                or self.now() - self._attempted_at >= self.refetch_seconds)

    def _refresh(self) -> None:
        """Fetch discovery (once) and the key set; Unavailable on any failure."""
        self._attempted_at = self.now()
        self.attempts += 1
        try:
            if self._jwks_uri is None:
                self._jwks_uri = self._discover()
            keys = signing_keys(self._get_json(self._jwks_uri))
        except (httpx.HTTPError, ValueError, RecursionError) as exc:
            self._jwks_uri = None  # discover again next time: the provider may have moved it
            self._failure = _describe(exc)
            raise Unavailable(f"The identity provider is unavailable: {self._failure}.") from exc
        self._keys, self._fetched_at, self._failure = keys, self._attempted_at, None

    def _discover(self) -> str:
        """The ``jwks_uri`` of the issuer's discovery document, after checking its issuer."""
        document = self._get_json(self.issuer.rstrip("/") + WELL_KNOWN)
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise ValueError("its discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or issuer_url_problem(jwks_uri):
            raise ValueError("its discovery document has no usable jwks_uri")
        if urlsplit(jwks_uri).scheme != urlsplit(self.issuer).scheme:
            raise ValueError("its jwks_uri is not on the issuer's scheme")
        return jwks_uri

    def _get_json(self, url: str) -> Any:
        """GET ``url`` as JSON, refusing redirects, error statuses and oversized bodies."""
        with self.http.stream("GET", url, headers={"Accept": "application/json"}) as response:
            response.raise_for_status()
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError("a document is too large")
        return json.loads(bytes(body))


class OidcVerifier:
    """Verifies tokens issued by one OIDC provider for one audience (DESIGN.md section 8)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        roles_claim: str = "roles",
        org_claim: str = "org",
        cache_seconds: float = 300,
        refetch_seconds: float = 1.0,
        leeway: int = 30,
        max_ttl: int = 86_400,
        http: httpx.Client | None = None,
    ) -> None:
        problem = issuer_url_problem(issuer)
        if problem:
            raise ValueError(f"OIDC issuer {issuer!r}: {problem}")
        self.issuer = issuer
        self.audience = audience
        self.roles_path = tuple(roles_claim.split("."))
        self.org_path = tuple(org_claim.split("."))
        self.leeway = leeway
        self.max_ttl = max_ttl
        self.http = http or httpx.Client(
            timeout=httpx.Timeout(3.0, connect=2.0), follow_redirects=False)
        self.keys = JwksCache(issuer=issuer, http=self.http, cache_seconds=cache_seconds,
                              refetch_seconds=refetch_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcVerifier:
        """The verifier ``BROKER_OIDC_*`` configure."""
        if settings.oidc_issuer is None or settings.oidc_audience is None:
            raise ValueError("BROKER_OIDC_ISSUER and BROKER_OIDC_AUDIENCE are needed")
        return cls(issuer=settings.oidc_issuer, audience=settings.oidc_audience,
                   roles_claim=settings.oidc_roles_claim, org_claim=settings.oidc_org_claim,
                   cache_seconds=settings.oidc_jwks_cache_seconds,
                   leeway=settings.jwt_leeway_seconds, max_ttl=settings.jwt_max_ttl_seconds)

    def close(self) -> None:
        """Close the HTTP client the key fetches use."""
        self.http.close()

    def verify(self, token: str) -> Principal:
        """The principal a valid token of the provider names; Unauthenticated for anything
        else; Unavailable if the provider is needed and cannot be reached."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("The bearer token is too large.")
        header = _header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS:
            raise Unauthenticated("The bearer token's algorithm is not accepted.")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCESS_TYPES):
            raise Unauthenticated("The bearer token is not an access token ('typ').")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise Unauthenticated("The bearer token names no key ('kid').")
        key = self.keys.key(kid)
        if key is None:
            raise Unauthenticated("The bearer token's key is not one of the issuer's.")
        if key.algorithm != alg:
            raise Unauthenticated("The bearer token's algorithm does not fit its key.")
        claims = decode_claims(token, key.jwk.key, algorithms=[key.algorithm],
                               audience=self.audience, issuer=self.issuer, leeway=self.leeway,
                               max_ttl=self.max_ttl)
        kind = claims.get("typ")  # Keycloak's own: "Bearer" for access tokens, "ID", "Refresh"
        if kind is not None and (not isinstance(kind, str) or kind.lower() != "bearer"):
            raise Unauthenticated("The bearer token is not an access token (an ID or refresh "
                                  "token cannot call the API).")
        sub, org = subject_of(claims), org_of(_claim(claims, self.org_path))
        return Principal(iss=self.issuer, sub=sub, org=org,
                         roles=self._roles(_claim(claims, self.roles_path)))

    def _roles(self, value: object) -> frozenset[Role]:
        """The broker roles among the token's roles: a provider's own roles (Keycloak adds
        ``offline_access``, ``uma_authorization``, ``default-roles-<realm>``) are ignored,
        and a token with no broker role at all is refused."""
        if not isinstance(value, list):
            raise Unauthenticated(f"The token's '{'.'.join(self.roles_path)}' claim must be "
                                  "a list of roles.")
        known = {r.value for r in Role}
        roles = frozenset(Role(r) for r in value if isinstance(r, str) and r in known)
        if not roles:
            raise Unauthenticated("The token grants no broker role (provider, consumer, "
                                  "auditor, admin).")
        return roles


def _header(token: str) -> dict[str, Any]:
    """The token's JOSE header, read only to pick the key: ``jwt.decode`` then checks the whole
    token again (header included) against that key's one algorithm. Only the header segment is
    decoded here (``jwt.get_unverified_header`` would decode all three, doubling the parse)."""
    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, TypeError, RecursionError) as exc:  # a header of 3,000 '[' recurses
        raise Unauthenticated("The bearer token is not valid.") from exc
    if not isinstance(header, dict):
        raise Unauthenticated("The bearer token is not valid.")
    return header


def _claim(claims: Mapping[str, Any], path: tuple[str, ...]) -> object:
    """The claim at a dotted path (``realm_access.roles``), or None."""
    value: object = claims
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _describe(exc: Exception) -> str:
    """A short reason for a failed fetch, without URLs or bodies."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"it answered HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.HTTPError):
        return "it could not be reached"
    return str(exc)
