"""The console's login through the OIDC provider: the authorization code flow with PKCE.

The console is the provider's client (OpenID Connect Core 1.0, 3.1; RFC 7636 with S256):

1. ``start`` makes a fresh ``state``, ``nonce`` and PKCE verifier, which the session cookie
   keeps (signed, HttpOnly, only sent to ``/console``), and sends the browser to the provider's
   authorization endpoint with the S256 challenge.
2. ``finish`` (the callback) takes the code only with the session's ``state`` (and, when the
   provider names itself in the response as RFC 9207 lets it, only from this issuer), redeems
   it at the token endpoint with the verifier (and the client secret of a confidential client),
   then verifies the ID token: signature by a key of the provider's JWKS under RS256, ES256 or
   EdDSA only, ``iss`` the configured issuer, ``aud`` the client id (``azp`` too when there are
   several audiences), the session's ``nonce``, ``exp`` and ``iat``.
3. It answers the ACCESS token, which the route verifies once more with the broker's own
   verifier (``container.tokens``) before keeping it in the session: the ID token says who
   logged in to the console; only the access token (audience: the broker) acts in it.

Libraries: Authlib's requests client (``OAuth2Session``) builds the authorization URL, the
S256 challenge and the token request, and reports the provider's refusals as ``OAuthError``;
joserfc (Authlib's own JOSE library) verifies the ID token against the JWK Set with an explicit
algorithm list and a claims registry. The provider's discovery document and keys are fetched
with timeouts, no redirects and a size limit, cached, and fetched again when stale or when an
ID token names an unknown key (at most once a second). The provider unreachable is
``Unavailable`` (503); everything it or the browser sends that does not check out is
``Unauthenticated`` (401). Nothing here logs or reports a token, a code or a claim's value.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from broker.console.session import Login
from broker.domain.errors import Unauthenticated, Unavailable
from broker.settings import Settings, issuer_url_problem

WELL_KNOWN = "/.well-known/openid-configuration"
#: The ID token's algorithms: asymmetric only (an HMAC ID token would be keyed with the
#: client secret, which a public client has not got), as the API's verifier accepts.
ID_TOKEN_ALGORITHMS = ("RS256", "ES256", "EdDSA")
#: A discovery document or key set larger than this is refused (real ones are a few KiB).
MAX_DOCUMENT_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class Endpoints:
    """What the console needs from the provider's discovery document."""

    authorization: str
    token: str
    jwks_uri: str
    end_session: str | None
    #: Whether the provider adds ``iss`` to its authorization responses (RFC 9207).
    iss_in_response: bool


class OidcLogin:
    """The console's client at one OIDC provider."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str | None = None,
        scopes: str = "openid",
        base_url: str | None = None,
        cache_seconds: float = 300,
        leeway: int = 30,
        timeout: float = 5.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        problem = issuer_url_problem(issuer)
        if problem:
            raise ValueError(f"OIDC issuer {issuer!r}: {problem}")
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.scopes = scopes
        self.base_url = base_url.rstrip("/") if base_url else None
        self.cache_seconds = cache_seconds
        self.leeway = leeway
        self.timeout = timeout
        self.now = now
        self._lock = threading.Lock()
        self._endpoints: Endpoints | None = None
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._keys_attempted_at: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcLogin | None:
        """The login ``BROKER_OIDC_*`` configure; None without an issuer or a client id."""
        if not settings.oidc_issuer or not settings.oidc_client_id:
            return None
        secret = settings.oidc_client_secret
        return cls(issuer=settings.oidc_issuer, client_id=settings.oidc_client_id,
                   client_secret=secret.get_secret_value() if secret is not None else None,
                   scopes=settings.oidc_scopes,
                   base_url=settings.console_url or settings.public_url,
                   cache_seconds=settings.oidc_jwks_cache_seconds,
                   leeway=settings.jwt_leeway_seconds)

    def console_url(self, request_base: str) -> str:
        """The console's URL: under the configured base URL, else the request's own."""
        return (self.base_url or request_base.rstrip("/")) + "/console"

    def redirect_uri(self, request_base: str) -> str:
        """The callback's URL, which the provider must have registered for the client."""
        return self.console_url(request_base) + "/oidc/callback"

    def start(self, *, redirect_uri: str, next_url: str) -> tuple[str, Login]:
        """Where to send the browser, and the login the session must keep until the
        callback."""
        endpoints = self.endpoints()
        login = Login(state=generate_token(32), nonce=generate_token(32),
                      verifier=generate_token(64), next=next_url)
        with self._client(redirect_uri) as client:
            url, _state = client.create_authorization_url(
                endpoints.authorization, state=login.state, code_verifier=login.verifier,
                nonce=login.nonce)
        return url, login

    def finish(self, login: Login, *, params: dict[str, str], redirect_uri: str) -> str:
        """The access token of a successful authorization response ``params`` for ``login``;
        Unauthenticated when anything does not check out."""
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), login.state.encode()):
            raise Unauthenticated("The login's state does not match this session.")
        endpoints = self.endpoints()
        iss = params.get("iss")
        if (iss is not None or endpoints.iss_in_response) and iss != self.issuer:
            raise Unauthenticated("The authorization response comes from another issuer.")
        if "error" in params:
            raise Unauthenticated("The identity provider did not log you in.",
                                  reasons=[_reason(params["error"])])
        code = params.get("code")
        if not code:
            raise Unauthenticated("The authorization response carries no code.")
        with self._client(redirect_uri) as client:
            try:
                token = client.fetch_token(
                    endpoints.token, grant_type="authorization_code", code=code,
                    code_verifier=login.verifier, timeout=self.timeout,
                    allow_redirects=False)
            except OAuthError as exc:
                raise Unauthenticated("The identity provider refused the code.",
                                      reasons=[_reason(exc.error)]) from exc
            except (requests.RequestException, ValueError) as exc:
                raise Unavailable("The identity provider is unavailable.") from exc
        id_token, access_token = token.get("id_token"), token.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise Unauthenticated("The identity provider answered without an ID token or an "
                                  "access token.")
        self.verify_id_token(id_token, nonce=login.nonce)
        return access_token

    def verify_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """The claims of an ID token the provider signed for this client and this login."""
        try:
            token = jwt.decode(id_token, self._key_set(), algorithms=list(ID_TOKEN_ALGORITHMS))
        except InvalidKeyIdError:
            token = self._decode_with_fresh_keys(id_token)
        except JoseError as exc:
            raise Unauthenticated("The ID token is not valid.") from exc
        claims = dict(token.claims)
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.client_id},
            sub={"essential": True},
            nonce={"essential": True, "value": nonce},
            exp={"essential": True},
            iat={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise Unauthenticated("The ID token is not for this login.",
                                  reasons=[_reason(getattr(exc, "claim", None) or exc.error)]
                                  ) from exc
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.client_id:
            raise Unauthenticated("The ID token is not for this login.", reasons=["azp"])
        return claims

    def logout_url(self, post_logout_redirect_uri: str) -> str | None:
        """The provider's end-session URL (RP-Initiated Logout 1.0), or None when it has none
        or cannot be reached (the console's own session is gone either way)."""
        try:
            endpoint = self.endpoints().end_session
        except Unavailable:
            return None
        if endpoint is None:
            return None
        query = urlencode({"client_id": self.client_id,
                           "post_logout_redirect_uri": post_logout_redirect_uri})
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def endpoints(self) -> Endpoints:
        """The provider's endpoints (discovery, cached); Unavailable when it cannot be read."""
        with self._lock:
            if self._endpoints is not None and self.now() - self._fetched_at < self.cache_seconds:
                return self._endpoints
            try:
                self._endpoints = self._discover()
            except (requests.RequestException, ValueError, RecursionError) as exc:
                raise Unavailable("The identity provider is unavailable.") from exc
            self._keys = None
            self._fetched_at = self.now()
            return self._endpoints

    def _client(self, redirect_uri: str) -> OAuth2Session:
        return OAuth2Session(
            client_id=self.client_id, client_secret=self.client_secret,
            token_endpoint_auth_method=(
                "client_secret_basic" if self.client_secret else "none"),
            scope=self.scopes, redirect_uri=redirect_uri, code_challenge_method="S256",
            default_timeout=self.timeout)

    def _discover(self) -> Endpoints:
        doc = self._get_json(self.issuer.rstrip("/") + WELL_KNOWN)
        if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
            raise ValueError("its discovery document names another issuer")
        urls: dict[str, str] = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str) or issuer_url_problem(value):
                raise ValueError(f"its discovery document has no usable {name}")
            urls[name] = value
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise ValueError("the provider does not support PKCE with S256")
        end_session = doc.get("end_session_endpoint")
        return Endpoints(
            authorization=urls["authorization_endpoint"], token=urls["token_endpoint"],
            jwks_uri=urls["jwks_uri"],
            end_session=(end_session if isinstance(end_session, str)
                         and not issuer_url_problem(end_session) else None),
            iss_in_response=doc.get("authorization_response_iss_parameter_supported") is True)

    def _key_set(self) -> KeySet:
        endpoints = self.endpoints()
        with self._lock:
            if self._keys is None:
                self._keys = self._fetch_keys(endpoints)
            return self._keys

    def _decode_with_fresh_keys(self, id_token: str) -> jwt.Token:
        """Decode after fetching the key set again (the provider may have rotated its keys),
        at most once a second."""
        endpoints = self.endpoints()
        with self._lock:
            now = self.now()
            if self._keys_attempted_at is None or now - self._keys_attempted_at >= 1.0:
                self._keys = self._fetch_keys(endpoints)
            keys = self._keys
        try:
            return jwt.decode(id_token, keys or KeySet([]),
                              algorithms=list(ID_TOKEN_ALGORITHMS))
        except JoseError as exc:
            raise Unauthenticated("The ID token is not valid.") from exc

    def _fetch_keys(self, endpoints: Endpoints) -> KeySet:
        self._keys_attempted_at = self.now()
        try:
            doc = self._get_json(endpoints.jwks_uri)
        except (requests.RequestException, ValueError, RecursionError) as exc:
            raise Unavailable("The identity provider is unavailable.") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise Unavailable("The identity provider's key set is not valid.")
        usable = [k for k in doc["keys"] if isinstance(k, dict)
                  and k.get("kty") in ("RSA", "EC", "OKP") and k.get("use", "sig") == "sig"]
        try:
            return KeySet.import_key_set({"keys": usable})
        except (JoseError, ValueError) as exc:
            raise Unavailable("The identity provider's key set is not valid.") from exc

    def _get_json(self, url: str) -> Any:
        """GET ``url`` as JSON: no redirects, a timeout, and a size limit."""
        with requests.get(url, headers={"Accept": "application/json"}, timeout=self.timeout,
                          allow_redirects=False, stream=True) as response:
            if response.status_code != 200:
                raise ValueError(f"it answered HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_content(64 * 1024):
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError("a document is too large")
        return json.loads(bytes(body))


def _reason(value: object) -> str:
    """A provider's error code as a reason: a short token, never free text from outside."""
    text = str(value or "unknown")
    return text if text.replace("_", "").replace("-", "").isalnum() and len(text) <= 40 \
        else "invalid-response"

