"""The whole story over HTTP against a real ``broker serve`` process on loopback."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker.api.auth import mint_token
from broker.demo.county import generate_county, land_slice
from broker.demo.story import Broker, run_story
from broker.settings import Settings
from tests.server import broker_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Settings, Path]]:
    data_dir = tmp_path / "var"
    # Without a secret in its environment, the server generates its own.
    with broker_server(tmp_path, {"BROKER_DATA_DIR": str(data_dir)},
                       unset=("BROKER_JWT_SECRET",)) as base:
        yield base, Settings(data_dir=data_dir), tmp_path / "server.log"


def test_the_story_over_real_http(server: tuple[str, Settings, Path]) -> None:
    base, settings, log_path = server
    from broker.store.keys import jwt_secret

    secret = jwt_secret(settings)  # the file the server generated on first run

    def mint(sub: str, org: str, roles: list[str]) -> str:
        return mint_token(key=secret, issuer=settings.jwt_issuer,
                          audience=settings.jwt_audience, sub=sub, org=org, roles=roles)

    county = generate_county(enterprises=800)
    with httpx.Client(base_url=base, timeout=60) as client:
        result = run_story(Broker(client, mint), county)
        assert client.get("/docs").status_code == 200

    energy = result.queries["electricity by town and industry"]
    statuses = {c["status"] for c in energy["cells"]}
    assert statuses == {"published", "suppressed"}
    for cell in energy["cells"]:
        if cell["status"] == "suppressed":
            assert cell["values"] is None
        else:
            assert cell["values"]["count"] >= 5
    # The giants are withheld for dominance, and complements protect them from the margins.
    assert {"dominance", "complementary"} <= set(energy["suppressed"])
    # Every town and industry of the county's code lists is a key, with or without firms.
    assert len(energy["cells"]) == (10 + 1) * (5 + 1)
    tracked = [a for title, a in result.queries.items() if " outside " in title]
    assert [c["reason"] for c in tracked[0]["cells"]] == ["differencing"]
    reasons = [set(step.body["reasons"]) for step in result.refusals]
    assert reasons == [{"no-active-contract"}, {"purpose-not-in-contract"},
                       {"entity-field-not-usable", "field-not-in-contract"},
                       {"generalization-required"}, {"contract-not-linkable"},
                       {"contract-not-active"}]
    # Across providers: joined by enterprise, only firms in both sources count.
    per_mu = result.queries["output and tax per mu of land by town (tax x land)"]
    total = next(c for c in per_mu["cells"] if c["key"] == {})
    both = len(set(county.enterprises["uscc"]) & set(land_slice(county).frame["uscc"]))
    assert total["values"]["count"] == both < len(county.enterprises)
    check = result.queries["electricity: grid meters cross-checked against enterprises' reports"]
    for cell in check["cells"]:  # (800 firms: few disagree per industry, so most withheld)
        if cell["status"] == "published":
            assert set(cell["values"]) == {"compared", "disagree", "abs_diff_sum"}
            assert cell["values"]["disagree"] >= 5
        else:
            assert cell["values"] is None
    assert not any(uscc in str(check) for uscc in county.enterprises["uscc"][:200])
    (dry,) = result.explanations.values()
    assert dry["allow"] is True
    assert dry["fields"] == {"industry": "generalize", "month": "generalize",
                             "tax_paid": "aggregate", "output_value": "aggregate"}
    assert result.contracts["electricity"]["status"] == "revoked"
    # The auditor's own read is appended after the page it read.
    assert result.verify["valid"] is True
    assert result.verify["size"] == len(result.audit_entries) + 1
    queries = [e["entry"] for e in result.audit_entries
               if e["entry"]["action"] == "query.aggregate"]
    denied = [e for e in queries if not e["decision"]["allowed"]]
    assert {e["actor"]["org"] for e in denied} == {"environment-bureau", "economic-bureau"}
    assert any(e["actor"]["org"] == "environment-bureau" for e in
               (i["entry"] for i in result.provider_view))

    # No row value of any dataset in the audit table or the server's log.
    names = set(county.enterprises["uscc"]) | set(county.enterprises["name"])
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        bodies = " ".join(r[0] for r in conn.execute("SELECT body FROM audit_entries"))
    server_log = log_path.read_text()
    sample = list(names)[:400]
    assert not [v for v in sample if v in bodies or v in server_log]
