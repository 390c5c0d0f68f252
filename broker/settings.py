"""Settings from the environment (prefix ``BROKER_``); every default is the embedded one."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from policies import POLICY_DIR

#: OAuth scopes: scope-tokens (RFC 6749, 3.3) separated by single spaces.
SCOPES = r"^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$"


class Settings(BaseSettings):
    """Configuration shared by ``broker serve``, the CLI and the tests."""

    model_config = SettingsConfigDict(env_prefix="BROKER_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None
    jwt_secret: SecretStr | None = None
    jwt_issuer: str = "broker-dev"
    jwt_audience: str = "broker"
    jwt_algorithms: list[Literal["HS256", "HS384", "HS512"]] = ["HS256"]
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    #: The longest a token may live (``exp - iat``); a longer one is refused.
    jwt_max_ttl_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    #: The operator organisation: the only one whose tokens may hold ``admin``. It exists
    #: from the start, without registration, and no organisation may be registered under it.
    operator_org: str = Field(default="broker-ops", pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    #: Requests one principal (token ``iss`` + ``sub``) may make, in the notation of the
    #: ``limits`` library (``120/minute``, ``10/second;600/hour``); over it, a 429 problem with
    #: ``Retry-After``. Empty: no rate limit.
    rate_limit: str = "600/minute"
    #: Requests one principal may have in flight at once; over it, a 429 problem.
    max_concurrent_per_principal: int = Field(default=8, ge=1, le=1024)
    #: Requests the principals of one organisation may have in flight at once (the route
    #: handlers' pool has 40 threads: keep this well under it).
    max_concurrent_per_org: int = Field(default=16, ge=1, le=4096)
    #: The OIDC provider whose tokens the broker accepts (DESIGN.md section 8); with it set,
    #: the dev HS256 secret is refused. ``https``, or ``http`` on loopback only.
    oidc_issuer: str | None = Field(default=None, max_length=500)
    #: The audience every OIDC token must name; required with ``oidc_issuer``.
    oidc_audience: str | None = Field(default=None, min_length=1, max_length=200)
    #: Where the roles are in the token: a dotted path (Keycloak: ``realm_access.roles``).
    oidc_roles_claim: str = Field(default="roles", pattern=r"^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$")
    #: Where the organisation id is in the token: a dotted path.
    oidc_org_claim: str = Field(default="org", pattern=r"^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$")
    #: How long the provider's keys are used before they are fetched again.
    oidc_jwks_cache_seconds: int = Field(default=300, ge=1, le=86_400)
    #: The console's client at the OIDC provider (authorization code with PKCE); without it
    #: the console offers no login through the provider.
    oidc_client_id: str | None = Field(default=None, min_length=1, max_length=200)
    #: The client's secret, for a confidential client; a public client uses PKCE alone.
    oidc_client_secret: SecretStr | None = None
    #: The scopes the console asks for: ``openid`` plus whatever the provider needs to put the
    #: organisation and roles into the access token.
    oidc_scopes: str = Field(default="openid", pattern=SCOPES, max_length=500)
    #: The console's public base URL (``https://broker.example.gov.cn``): the OIDC redirect URI
    #: is ``{console_url}/console/oidc/callback``. Unset: ``public_url``, else the request's.
    console_url: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]{1,200}$")
    #: The web console's dev login (``/console/login``: pick an organisation and a role).
    #: Unset, it is on exactly when no OIDC issuer is configured, and then only for clients on
    #: loopback (this machine); ``true`` opens it to every client (a shared demo), ``false``
    #: shuts it. It cannot be on with an issuer (its tokens are the dev secret's, which the
    #: broker then refuses).
    console_dev_login: bool | None = None
    #: How long a console session lasts (and the dev login's tokens).
    console_session_seconds: int = Field(default=8 * 3600, ge=60, le=7 * 86_400)
    policy_engine: Literal["embedded", "opa"] = "embedded"
    policy_dir: Path = POLICY_DIR
    policy_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    policy_cache_size: int = Field(default=10_000, ge=0, le=10_000_000)
    opa_url: str | None = None
    opa_token: SecretStr | None = None
    opa_push_policies: bool = False
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    #: SQL databases providers may snapshot datasets from, by name: name -> SQLAlchemy URL.
    #: Only the operator names them, so no caller can point the broker at a database
    #: (its own metadata store included) by URL.
    sql_sources: dict[str, str] = {}
    #: Whether the broker generates and holds an Ed25519 key for an organisation registered
    #: without a public key (embedded demo). Off in production: every organisation then signs
    #: its own offers and acceptances outside the broker.
    custodial_org_keys: bool = True
    #: The broker's public base URL, for the IRIs of exported documents (ODRL); the request's
    #: own base URL when unset.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s]{1,200}$")
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    engine_threads: int = Field(default=2, ge=1, le=64)
    audit_origin: str = Field(default="localhost/broker-audit", pattern=r"^[^\s+]{1,200}$")
    checkpoint_key_file: Path | None = None
    #: The 32-byte master key that wraps every dataset version's data key. Keep it outside
    #: the database (default: generated into the data directory's keys on first run; mount it
    #: from a secret store in production). ``broker keys rotate`` replaces it.
    master_key_file: Path | None = None
    checkpoint_dir: Path | None = None
    checkpoint_sinks: list[Literal["dir", "stdout", "syslog"]] = ["dir"]
    checkpoint_every_entries: int = Field(default=1000, ge=1)
    checkpoint_every_seconds: float = Field(default=60.0, gt=0, le=86_400)
    #: Log lines of ``broker serve``: ``json`` (one object per line, the default there) or
    #: ``text``. Unset elsewhere, the broker leaves logging as its host configured it.
    log_format: Literal["json", "text"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: An OTLP/HTTP collector's base URL (``http://collector:4318``): traces are exported to
    #: its ``/v1/traces``. Unset, the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` is read; with
    #: neither, nothing is traced.
    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s]{1,200}$")

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        if value.strip():
            try:
                parse_many(value)
            except ValueError as exc:
                raise ValueError(f"rate_limit: not a rate such as '120/minute': {exc}") from exc
        return value

    @model_validator(mode="after")
    def _opa_needs_url(self) -> Settings:
        if self.policy_engine == "opa" and not self.opa_url:
            raise ValueError("BROKER_POLICY_ENGINE=opa needs BROKER_OPA_URL")
        return self

    @model_validator(mode="after")
    def _oidc_is_pinned(self) -> Settings:
        if self.oidc_issuer is None:
            return self
        problem = issuer_url_problem(self.oidc_issuer)
        if problem:
            raise ValueError(f"BROKER_OIDC_ISSUER: {problem}")
        if not self.oidc_audience:
            raise ValueError("BROKER_OIDC_ISSUER needs BROKER_OIDC_AUDIENCE (the audience is "
                             "pinned)")
        return self

    @model_validator(mode="after")
    def _scopes_ask_for_openid(self) -> Settings:
        if "openid" not in self.oidc_scopes.split(" "):
            raise ValueError("BROKER_OIDC_SCOPES must include 'openid'")
        return self

    @model_validator(mode="after")
    def _dev_login_without_oidc(self) -> Settings:
        if self.console_dev_login and self.oidc_issuer:
            raise ValueError("BROKER_CONSOLE_DEV_LOGIN cannot be on with BROKER_OIDC_ISSUER: "
                             "the console logs in through the identity provider")
        return self

    @property
    def dev_login(self) -> bool:
        """Whether the console offers the dev login."""
        if self.console_dev_login is None:
            return self.oidc_issuer is None
        return self.console_dev_login

    @property
    def db_url(self) -> str:
        """The database URL: the configured one, or SQLite in the data directory."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def keys_dir(self) -> Path:
        """Where generated secrets and keys live (outside the database)."""
        return self.data_dir / "keys"

    @property
    def checkpoint_key_path(self) -> Path:
        """The Ed25519 key that signs checkpoints: a file, never in the database."""
        return self.checkpoint_key_file or self.keys_dir / "checkpoint-ed25519.pem"

    @property
    def master_key_path(self) -> Path:
        """The master key that wraps the data keys of everything stored encrypted."""
        return self.master_key_file or self.keys_dir / "master.key"

    @property
    def checkpoints_path(self) -> Path:
        """The directory signed checkpoints are copied to, outside the database."""
        return self.checkpoint_dir or self.data_dir / "checkpoints"

    @property
    def datasets_dir(self) -> Path:
        """Where dataset versions are stored."""
        return self.data_dir / "datasets"

    @property
    def uploads_dir(self) -> Path:
        """Scratch space for uploads being checked."""
        return self.data_dir / "uploads"


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def issuer_url_problem(url: str) -> str | None:
    """Why ``url`` cannot name an OIDC issuer (or its key set), or None: it must be ``https``,
    or ``http`` on loopback only (a test provider), with a host and no query or fragment. Keys
    fetched over plain HTTP from another host could be swapped by anyone on the path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("https", "http") or not host:
        return "an http(s) URL with a host is needed"
    if parts.query or parts.fragment or parts.username or parts.password:
        return "no query, fragment or credentials may be part of it"
    if parts.scheme == "http" and host.lower() not in LOOPBACK_HOSTS:
        return "http is accepted on loopback only (127.0.0.1, ::1, localhost); use https"
    return None
