"""Real OIDC providers on loopback for the test session: ``tests/oidc/provider.mjs`` (tokens
and keys for the API) and ``tests/oidc/login.mjs`` (the console's login, see LoginProvider).

That script runs oauth2-mock-server (pinned in ``tests/oidc/package.json``, installed by
``make install`` with ``npm ci --prefix tests/oidc``) on 127.0.0.1 and a port the OS picks,
with an RS256, an ES256 and an EdDSA key (kids ``rs256-1``, ``es256-1``, ``eddsa-1``), and
takes commands on stdin to add, publish and retire keys. Tokens are obtained as a client would,
over HTTP from its ``/token`` endpoint.

``oidc_provider`` and ``other_oidc_provider`` (session scope) are two independent instances
(the same kids, different keys). Without ``node`` the fixtures skip, except under CI (``CI``
set and not ``false``/``0``), where they fail: CI must not silently lose these tests. Missing
``node_modules`` always fails, with the command that installs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import httpx
import pytest

PACKAGE = Path(__file__).parent / "oidc"
START_TIMEOUT = 30  # seconds
REPLY_TIMEOUT = 10


class OidcProvider:
    """A running provider: its issuer URL, its tokens and its key commands."""

    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.log = log
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        assert proc.stdout is not None
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()
        hello = self._reply(START_TIMEOUT)
        self.issuer: str = hello["issuer"]
        self.kids: dict[str, str] = {k["alg"]: k["kid"] for k in hello["keys"]}

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def _reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            raise RuntimeError(f"the OIDC provider did not answer; its log:\n{self.tail()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def tail(self) -> str:
        """The end of the provider's stderr."""
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def command(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one command (``generate``, ``publish``, ``retire``, ``stats``); its reply."""
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self.proc.stdin.flush()
            reply = self._reply(REPLY_TIMEOUT)
        if not reply.get("ok"):
            raise RuntimeError(f"{op} failed: {reply}")
        return reply

    def jwks_served(self) -> int:
        """How many key set requests the provider has answered so far."""
        return int(self.command("stats")["jwks"])

    def jwks(self) -> dict[str, Any]:
        """The provider's published key set, fetched as the broker does."""
        doc = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=5).json()
        keys: dict[str, Any] = httpx.get(doc["jwks_uri"], timeout=5).json()
        return keys

    def token(
        self,
        *,
        kid: str,
        sub: str = "ops@broker-ops",
        audience: str | None = "broker",
        claims: dict[str, Any] | None = None,
        header: dict[str, Any] | None = None,
        expires_in: int | None = None,
    ) -> str:
        """An access token from ``POST /token`` (client credentials), signed with key ``kid``,
        with ``claims`` merged into the payload (default: admin of ``broker-ops``, the roles
        where Keycloak puts them)."""
        form: dict[str, str] = {"grant_type": "client_credentials", "kid": kid, "sub": sub}
        if audience is not None:
            form["aud"] = audience
        form["claims"] = json.dumps(claims if claims is not None else {
            "org": "broker-ops", "realm_access": {"roles": ["admin", "offline_access"]}})
        if header is not None:
            form["header"] = json.dumps(header)
        if expires_in is not None:
            form["expires_in"] = str(expires_in)
        response = httpx.post(f"{self.issuer}/token", data=form, timeout=5)
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def stop(self) -> None:
        """Close its stdin (it stops itself), or terminate it."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str, *, always_fail: bool = False) -> NoReturn:
    message = f"OIDC tests need a provider: {reason}"
    if always_fail or _is_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def running_provider() -> Iterator[OidcProvider]:
    """Start ``tests/oidc/provider.mjs``; stop it on exit."""
    node = shutil.which("node")
    if node is None:
        _unavailable("`node` is not installed (Node 20.19 or later)")
    if not (PACKAGE / "node_modules" / "oauth2-mock-server").is_dir():
        _unavailable("its package is not installed; run `make install` "
                     "(or `npm ci --prefix tests/oidc`)", always_fail=True)
    with tempfile.TemporaryDirectory(prefix="oidc-provider-") as tmp:
        log = Path(tmp) / "stderr.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [node, str(PACKAGE / "provider.mjs")], cwd=PACKAGE, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        try:
            provider = OidcProvider(proc, log)
        except Exception:
            proc.kill()
            proc.wait()
            raise
        try:
            yield provider
        finally:
            provider.stop()


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OidcProvider]:
    """The OIDC provider the tests' broker trusts."""
    with running_provider() as provider:
        yield provider


@pytest.fixture(scope="session")
def other_oidc_provider() -> Iterator[OidcProvider]:
    """A second, independent provider (same kids, other keys) the broker does not trust."""
    with running_provider() as provider:
        yield provider


class LoginProvider:
    """``tests/oidc/login.mjs`` running: panva's oidc-provider with the authorization code
    flow, PKCE required, a minimal login page, and Dynamic Client Registration."""

    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.log = log
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            lines.put(proc.stdout.readline() or None)

        threading.Thread(target=read, daemon=True).start()
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            line = None
        if line is None:
            raise RuntimeError(f"the OIDC login provider did not start; its log:\n{self.tail()}")
        self.issuer: str = json.loads(line)["issuer"]

    def tail(self) -> str:
        """The end of the provider's stderr."""
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def discovery(self) -> dict[str, Any]:
        """The provider's discovery document."""
        doc: dict[str, Any] = httpx.get(
            f"{self.issuer}/.well-known/openid-configuration", timeout=5).raise_for_status().json()
        return doc

    def register(self, *, redirect_uris: Sequence[str],
                 post_logout_redirect_uris: Sequence[str] = (),
                 confidential: bool = False) -> tuple[str, str | None]:
        """A new client for the authorization code flow (RFC 7591): its id and, for a
        confidential client, its secret (a public client authenticates with PKCE alone)."""
        meta: dict[str, Any] = {
            "redirect_uris": list(redirect_uris),
            "post_logout_redirect_uris": list(post_logout_redirect_uris),
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic" if confidential else "none",
            "id_token_signed_response_alg": "RS256",
        }
        response = httpx.post(self.discovery()["registration_endpoint"], json=meta, timeout=5)
        response.raise_for_status()
        client = response.json()
        return client["client_id"], client.get("client_secret")

    def stop(self) -> None:
        """Close its stdin (it stops itself), or terminate it."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def running_login_provider() -> Iterator[LoginProvider]:
    """Start ``tests/oidc/login.mjs``; stop it on exit."""
    node = shutil.which("node")
    if node is None:
        _unavailable("`node` is not installed (Node 20.19 or later)")
    if not (PACKAGE / "node_modules" / "oidc-provider").is_dir():
        _unavailable("its package is not installed; run `make install` "
                     "(or `npm ci --prefix tests/oidc`)", always_fail=True)
    with tempfile.TemporaryDirectory(prefix="oidc-login-provider-") as tmp:
        log = Path(tmp) / "stderr.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [node, str(PACKAGE / "login.mjs")], cwd=PACKAGE, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        try:
            provider = LoginProvider(proc, log)
        except Exception:
            proc.kill()
            proc.wait()
            raise
        try:
            yield provider
        finally:
            provider.stop()


@pytest.fixture(scope="session")
def oidc_login_provider() -> Iterator[LoginProvider]:
    """The OIDC provider the console logs in through (authorization code with PKCE)."""
    with running_login_provider() as provider:
        yield provider
