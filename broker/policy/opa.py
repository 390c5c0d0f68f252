"""Decisions from an OPA server over its REST API, through opa-python-client.

In production OPA runs the official image and loads the policies as a bundle (``broker policy
bundle``; deploy/opa). With ``push`` the adapter uploads the modules and data itself through
the policy and data APIs instead (a bare OPA, the tests' loopback server). Either way every
decision carries ``data.policy.revision``, which :class:`~broker.policy.decisions.Policies`
compares with the revision of the broker's own copy: a server running other policies is
refused, never trusted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from opa_client import OpaClient

from broker.domain.errors import Unavailable
from broker.policy.bundle import PolicySources


def _client(url: str, timeout: float, token: str | None) -> OpaClient:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError("BROKER_OPA_URL must look like http(s)://host:port, with no path")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return OpaClient(host=parts.hostname, port=port, ssl=parts.scheme == "https",
                     token=token, retries=0, timeout=timeout)


class OpaServerPolicyEngine:
    """The ``opa`` adapter: ``POST /v1/data/{entrypoint}`` with the input, per decision.

    ``timeout`` bounds each connect and each read; a timeout, a refused connection, an HTTP
    error or an undefined result is Unavailable, which the services answer with 503 and audit.
    """

    name = "opa"

    def __init__(self, url: str, policy_dir: Path, *, timeout: float = 2.0,
                 token: str | None = None, push: bool = False) -> None:
        self._sources = PolicySources.load(policy_dir)
        self._client = _client(url, timeout, token)
        if push:
            self.push()

    @property
    def revision(self) -> str:
        """Revision of the broker's copy of the policies (what the server must be running)."""
        return self._sources.revision

    def push(self) -> None:
        """Upload every module and the data document (PUT /v1/policies, PUT /v1/data)."""
        try:
            for name, text in self._sources.modules.items():
                self._client.update_policy_from_string(text, name, rego_compat=False)
            for root, value in self._sources.document.items():
                self._client.update_or_create_data(value, root)
        except Exception as exc:
            raise Unavailable("The OPA server refused the policies.") from exc

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any:
        """The value of ``data.<entrypoint>`` for ``input``; Unavailable on any failure."""
        try:
            document = json.loads(json.dumps(input, allow_nan=False))
            answer = self._client.query_rule(document, entrypoint)
        except requests.Timeout as exc:
            raise Unavailable("The policy engine timed out; nothing was released.") from exc
        except Exception as exc:
            raise Unavailable("The policy engine failed; nothing was released.") from exc
        if not isinstance(answer, dict) or "result" not in answer:
            raise Unavailable("The policy gave no decision; nothing was released.")
        return answer["result"]

    def healthy(self) -> bool:
        """Whether the server answers its health check."""
        return bool(self._client.check_health())

    def close(self) -> None:
        """Close the HTTP session."""
        self._client.close_connection()
