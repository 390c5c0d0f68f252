"""Bearer tokens: verification of incoming JWTs and minting of dev tokens."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import jwt

from broker.domain.errors import Unauthenticated
from broker.domain.names import ORG_ID
from broker.domain.principals import Principal, Role

MAX_TOKEN_BYTES = 8192
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")


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
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("The bearer token has expired.") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("The bearer token is not valid.") from exc
        self._check_lifetime(claims.get("iat"), claims.get("exp"))
        sub, org, roles = claims.get("sub"), claims.get("org"), claims.get("roles")
        if not isinstance(sub, str) or not 0 < len(sub) <= 256:
            raise Unauthenticated("The token's 'sub' claim is not valid.")
        if not isinstance(org, str) or not ORG_ID.fullmatch(org):
            raise Unauthenticated("The token's 'org' claim is not valid.")
        if not isinstance(roles, list) or not roles:
            raise Unauthenticated("The token's 'roles' claim must be a non-empty list.")
        try:
            parsed = frozenset(Role(r) for r in roles)
        except ValueError as exc:
            raise Unauthenticated("The token's 'roles' claim names an unknown role.") from exc
        return Principal(iss=self.issuer, sub=sub, org=org, roles=parsed)


    def _check_lifetime(self, iat: object, exp: object) -> None:
        """``iat`` and ``exp`` are JSON numbers (not strings), ``iat`` not in the future, and
        the token lives at most ``max_ttl`` seconds: a token for a hundred years, or with an
        ``exp`` of 1e300, is refused however well it is signed."""
        issued, expires = _seconds(iat), _seconds(exp)
        if issued is None or expires is None:
            raise Unauthenticated("The token's 'iat' and 'exp' claims must be numbers.")
        if issued > time.time() + self.leeway:
            raise Unauthenticated("The token was issued in the future.")
        if expires - issued > self.max_ttl:
            raise Unauthenticated(f"The token lives longer than {self.max_ttl} seconds.")


def _seconds(value: object) -> float | None:
    """A NumericDate claim as seconds, or None unless it is a JSON number of a sane size (a
    400-digit integer would not even convert to a float)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value) if abs(value) < 2**53 else None
    if isinstance(value, float) and math.isfinite(value):
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
