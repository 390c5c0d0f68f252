"""Bearer tokens: verification of incoming JWTs and minting of dev tokens."""

from __future__ import annotations

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
    ) -> None:
        self.key = key
        self.algorithms = list(algorithms)
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

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
