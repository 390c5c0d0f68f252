"""``broker token``: mint a dev token with the broker's HS256 secret."""

from __future__ import annotations

from typing import Annotated

import typer

from broker.api.auth import mint_token
from broker.demo.story import Mint
from broker.settings import Settings
from broker.store.keys import jwt_secret


def minter(settings: Settings, ttl: int = 3600) -> Mint:
    """A function that mints dev tokens of ``ttl`` seconds for this broker."""
    secret = jwt_secret(settings)

    def mint(sub: str, org: str, roles: list[str]) -> str:
        return mint_token(key=secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                          sub=sub, org=org, roles=roles, ttl=ttl)

    return mint


def token(
    sub: Annotated[str, typer.Option(help="Subject (user) the token names")],
    org: Annotated[str, typer.Option(help="Organisation id")],
    role: Annotated[list[str], typer.Option(help="provider|consumer|auditor|admin; repeatable")],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds, at most "
                                     "BROKER_JWT_MAX_TTL_SECONDS", min=1)] = 3600,
) -> None:
    """Mint a dev token (HS256, the broker's secret) and print it alone on stdout."""
    settings = Settings()
    if ttl > settings.jwt_max_ttl_seconds:
        raise typer.BadParameter(f"at most {settings.jwt_max_ttl_seconds} seconds "
                                 "(BROKER_JWT_MAX_TTL_SECONDS), or the broker refuses it",
                                 param_hint="--ttl")
    try:
        value = minter(settings, ttl)(sub, org, role)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    print(value)


