"""Bearer tokens: verification of incoming JWTs and minting of dev tokens.

Two verifiers answer ``verify(token) -> Principal``: ``TokenVerifier`` here, for the dev HS256
secret of the embedded mode, and ``broker.api.oidc.OidcVerifier`` for an OIDC provider's
tokens. The lifetime and claim rules below are shared by both.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import jwt

from broker.domain.errors import Unauthenticated
from broker.domain.names import ORG_ID
from broker.domain.principals import Principal, Role

MAX_TOKEN_BYTES = 8192
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")


@runtime_checkable
class BearerVerifier(Protocol):
    """Turns a bearer token into the principal it names, or raises Unauthenticated (or
    Unavailable when a dependency of the check, such as the OIDC provider, cannot answer)."""

    def verify(self, token: str) -> Principal: ...


class TokenVerifier:
    """Checks signature (allow-listed algorithms only), expiry, issuer, audience and claims."""

    def __init__(
        self,
        *,
        key: str,
        algorithms: Iterable[str],
        issuer: str,
        audience: str,
        leeway: int = 30,
        max_ttl: int = 86_400,
    ) -> None:
        self.key = key
        self.algorithms = list(algorithms)
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.max_ttl = max_ttl

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; Unauthenticated for anything else."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("The bearer token is too large.")
        claims = decode_claims(token, self.key, algorithms=self.algorithms,
                               audience=self.audience, issuer=self.issuer, leeway=self.leeway,
                               max_ttl=self.max_ttl)
        sub, org, roles = subject_of(claims), org_of(claims.get("org")), claims.get("roles")
        if not isinstance(roles, list) or not roles:
            raise Unauthenticated("The token's 'roles' claim must be a non-empty list.")
        try:
            parsed = frozenset(Role(r) for r in roles)
        except ValueError as exc:
            raise Unauthenticated("The token's 'roles' claim names an unknown role.") from exc
        return Principal(iss=self.issuer, sub=sub, org=org, roles=parsed)


def decode_claims(token: str, key: Any, *, algorithms: list[str], audience: str, issuer: str,
                  leeway: int, max_ttl: int) -> dict[str, Any]:
    """The claims of ``token`` once its signature (``algorithms`` only), issuer, audience,
    required claims and lifetime check out; Unauthenticated otherwise."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=algorithms, audience=audience, issuer=issuer, leeway=leeway,
            options={"require": list(REQUIRED_CLAIMS), "verify_signature": True},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("The bearer token has expired.") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated("The bearer token is not valid.") from exc
    check_lifetime(claims, leeway=leeway, max_ttl=max_ttl)
    return claims


def check_lifetime(claims: Mapping[str, Any], *, leeway: int, max_ttl: int) -> None:
    """``iat`` and ``exp`` are integer JSON numbers (RFC 7519 allows fractions; the broker
    does not, so a value never depends on float rounding), ``iat`` not in the future, and the
    token lives at most ``max_ttl`` seconds: a token for a hundred years, or with an ``exp`` of
    1e300, is refused however well it is signed."""
    issued, expires = _seconds(claims.get("iat")), _seconds(claims.get("exp"))
    if issued is None or expires is None:
        raise Unauthenticated("The token's 'iat' and 'exp' claims must be integers.")
    if "nbf" in claims and _seconds(claims["nbf"]) is None:
        raise Unauthenticated("The token's 'nbf' claim must be an integer.")
    if issued > time.time() + leeway:
        raise Unauthenticated("The token was issued in the future.")
    if expires - issued > max_ttl:
        raise Unauthenticated(f"The token lives longer than {max_ttl} seconds.")


def subject_of(claims: Mapping[str, Any]) -> str:
    """The token's ``sub``: a string of 1 to 256 characters."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= 256:
        raise Unauthenticated("The token's 'sub' claim is not valid.")
    return sub


def org_of(value: object) -> str:
    """The organisation id a token names, checked against the broker's id pattern."""
    if not isinstance(value, str) or not ORG_ID.fullmatch(value):
        raise Unauthenticated("The token's 'org' claim is not valid.")
    return value


def _seconds(value: object) -> int | None:
    """A NumericDate claim as whole seconds, or None unless it is an integer JSON number of a
    sane size (not a float, not a bool, not a 400-digit integer)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return value
    return None


def mint_token(
    *,
    key: str,
    issuer: str,
    audience: str,
    sub: str,
    org: str,
    roles: Iterable[str],
    ttl: int = 3600,
    algorithm: str = "HS256",
) -> str:
    """A signed dev token with the claims of DESIGN.md section 5."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": sub,
        "org": org,
        "roles": sorted({Role(r).value for r in roles}),
        "iat": now,
        "exp": now + ttl,
    }
    return jwt.encode(claims, key, algorithm=algorithm)
