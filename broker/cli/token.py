"""``broker token``: mint a dev token with the broker's HS256 secret (embedded mode only)."""

from __future__ import annotations

from typing import Annotated

import typer

from broker.api.auth import mint_token
from broker.demo.story import Mint
from broker.settings import Settings
from broker.store.keys import jwt_secret


class DevTokensRefused(ValueError):
    """Dev tokens are refused: the broker takes its tokens from an OIDC provider."""


EXIT_REFUSED = 1


def minter(settings: Settings, ttl: int = 3600) -> Mint:
    """A function that mints dev tokens of ``ttl`` seconds for this broker; DevTokensRefused
    when OIDC is configured (the broker would refuse them, and the secret must not be made)."""
    if settings.oidc_issuer:
        raise DevTokensRefused(
            "BROKER_OIDC_ISSUER is set, so the broker accepts only that provider's tokens and "
            "refuses dev (HS256) tokens; get a token from the provider instead")
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
    """Mint a dev token (HS256, the broker's secret) and print it alone on stdout; refused
    when BROKER_OIDC_ISSUER is set."""
    settings = Settings()
    try:
        mint = minter(settings, ttl)
    except DevTokensRefused as exc:
        typer.echo(f"error: {exc} ({settings.oidc_issuer}).", err=True)
        raise typer.Exit(EXIT_REFUSED) from exc
    if ttl > settings.jwt_max_ttl_seconds:
        raise typer.BadParameter(f"at most {settings.jwt_max_ttl_seconds} seconds "
                                 "(BROKER_JWT_MAX_TTL_SECONDS), or the broker refuses it",
                                 param_hint="--ttl")
    try:
        value = mint(sub, org, role)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    print(value)


