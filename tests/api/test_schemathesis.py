"""The API answers as its own OpenAPI document says: schemathesis, every check, in process.

Every operation of ``/openapi.json`` is called with generated requests (valid and invalid
ones) in process, on a real app (set up through a ``TestClient``, then called through
schemathesis's own ASGI transport, which its checks' probes use too), with a real token of a
registered
organisation whose kind fits the role the operation needs: the operator organisation
``broker-ops`` for admin routes, an auditor organisation for audit routes, and a department
(which may both consume and provide) for the rest. Each response goes through every check
schemathesis enables by default, which is all of its built-in checks but the response-time
limit (there is none to hold it to): status codes, content types, headers and bodies as
declared, no 5xx, invalid data refused, valid data accepted (see ``CONFIG``), ``Allow`` on
405, 405 for undeclared methods, ignored auth.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr
from schemathesis import Case
from schemathesis.python import asgi
from schemathesis.schemas import BaseSchema

from broker.api.auth import mint_token
from broker.app import create_app
from broker.settings import Settings
from tests.conftest import ENERGY, ENERGY_META, SECRET, auth, upload

#: Examples per operation: enough to reach each declared response, bounded for CI.
EXAMPLES = 20


class Api:
    """The app under test, set up through one ``TestClient`` and then left to schemathesis's
    own in-process ASGI transport, with a token per kind of caller."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)

        def mint(org: str, *roles: str) -> str:
            return mint_token(key=SECRET, issuer=settings.jwt_issuer,
                              audience=settings.jwt_audience, sub=f"user@{org}", org=org,
                              roles=roles, ttl=3600)

        self.admin = mint("broker-ops", "admin")
        self.member = mint("dept", "consumer", "provider")
        self.auditor = mint("audit-office", "auditor")
        with TestClient(self.app) as client:
            for org, kind in [("dept", "department"), ("audit-office", "auditor")]:
                r = client.post("/v1/orgs", headers=auth(self.admin),
                                json={"id": org, "name": org.title(), "kind": kind})
                assert r.status_code == 201, r.text
            r = upload(client, self.member, ENERGY, ENERGY_META)
            assert r.status_code == 201, r.text

    def token_for(self, case: Case[Any]) -> str:
        """The token of the caller the operation is meant for."""
        path, method = case.operation.path, case.method.upper()
        if method == "POST" and (path == "/v1/orgs" or path.startswith("/v1/indicators")):
            return self.admin
        if path.startswith("/v1/audit"):
            return self.auditor
        return self.member


#: Schemathesis's configuration. Every built-in check is on (its default); the one setting
#: changed is what "schema-valid data accepted" means. A request the schema admits may still
#: break a rule a JSON schema cannot state: a public key that is not an Ed25519 key, a file
#: that does not match its declared fields, ``valid_until`` before ``valid_from``, a purpose
#: outside the catalogue, ``allowed`` and ``decision`` that disagree. Those are refused with a
#: documented 422 problem, so 422 is an expected answer to schema-valid data (and 413 to a
#: body over the configured limit); 5xx stays a failure through ``not_a_server_error``. The
#: base URL only names the in-process app for checks that send requests of their own.
CONFIG = schemathesis.Config.from_dict({
    "base-url": "http://localhost",
    "checks": {"positive_data_acceptance": {"expected-statuses": [
        "2xx", "401", "403", "404", "409", "413", "422", "429"]}},
})


def _schema() -> BaseSchema:
    """The app's own OpenAPI document (building the app connects nothing; its lifespan does)."""
    app = create_app(Settings(data_dir=Path("/nonexistent/openapi-only"),
                              jwt_secret=SecretStr(SECRET)))
    return schemathesis.openapi.from_dict(app.openapi(), config=CONFIG)


schema = _schema()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A running app with its organisations and one dataset, which the schema's cases call
    in process (schemathesis runs the app's lifespan once and keeps it until shut down)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("schemathesis") / "var",
                        jwt_secret=SecretStr(SECRET), max_upload_bytes=2_000_000)
    api = Api(settings)
    yield api
    asgi.shutdown_lifespans()


@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_every_operation_answers_as_documented(case: Case[Any], api: Api) -> None:
    # The schema was loaded before the app under test existed: give it the app now, so the
    # checks' own requests (ignored_auth's probe without a token, ...) reach it in process.
    case.operation.schema.app = case.operation.app = api.app
    # An empty list or object as a query value is sent as no parameter at all, so such a
    # "schema-violating" case is in fact a valid request (``?old=1`` for ``new=[]``).
    assume(not any(v in ([], {}) for v in (case.query or {}).values()))
    case.call_and_validate(headers=auth(api.token_for(case)))
