"""A broker made by release 0.1.0's own code is upgraded by ``broker db upgrade`` and answers
as before, with its audit log intact.

The test takes release 0.1.0 out of this repository's history (``git archive`` of its commit,
the last without migrations), runs that code as the server (so the database and the data
directory are made by it: organisations, four providers' sealed datasets, contracts, queries,
audit entries and signed checkpoints), stops it, and then, with this code:

* ``broker serve`` refuses the database, naming ``broker db upgrade``;
* ``broker db upgrade`` upgrades it;
* the queries 0.1.0 answered get the same cells (same statuses and reasons; values equal, to
  the last digits allowed for sums whose order of summation is now fixed);
* a query 0.1.0 never saw is computed from the old sealed files, matching the totals 0.1.0's
  own demo code computes from the same county;
* the audit log verifies (``broker audit verify``, against the checkpoints 0.1.0 published),
  and every entry 0.1.0 wrote is still there, byte for byte.

On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from broker.demo.story import ACTORS
from tests.server import broker_server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
#: Release 0.1.0 (tag v0.1.0): the last broker without migrations, the Alembic baseline.
RELEASE_0_1_0 = "3c6563f56516c40498e19ae509fdaa40bb88f948"
SECRET = "upgrade-test-secret-of-at-least-32-characters"

#: Run by release 0.1.0's code against its own server: the demo county, then queries; dumps
#: ids, answers, and the totals its demo data gives for a query it does not ask.
OLD_CLIENT = r"""
import json, sys
import httpx
from broker.cli.token import minter
from broker.demo.county import generate_county, grid_slice
from broker.demo.story import Broker, set_up
from broker.settings import Settings

base, out, queries = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with httpx.Client(base_url=base, timeout=300) as client:
    broker = Broker(client, minter(Settings(), ttl=3600))
    result = set_up(broker)
    contracts = {name: c["id"] for name, c in result.contracts.items()}
    answers = []
    for contract, body in queries:
        answers.append(broker.call("econ", "POST", "/v1/queries/aggregate", expect=200,
                                   json={"contract_id": contracts[contract], **body}).json())
frame = grid_slice(generate_county()).frame
truth = frame.groupby("town")["electricity_kwh"].sum().to_dict()
json.dump({"contracts": contracts, "answers": answers, "truth": truth}, open(out, "w"))
"""

QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("electricity", {"purpose": "energy-planning", "group_by": ["town"],
                     "measures": [{"fn": "count"}, {"fn": "sum", "field": "electricity_kwh"}]}),
    ("electricity", {"purpose": "industrial-policy", "group_by": ["industry"],
                     "measures": [{"fn": "sum", "field": "electricity_kwh"}]}),
    ("tax", {"purpose": "tax-analysis", "group_by": ["town"],
             "measures": [{"fn": "sum", "field": "output_value"}]}),
]
#: Asked only of the upgraded broker: the per-town totals, alone.
NEW_QUERY = {"purpose": "energy-planning", "group_by": ["town"],
             "measures": [{"fn": "sum", "field": "electricity_kwh"}]}


def _release_code(tmp_path: Path) -> Path:
    """Release 0.1.0's files, out of this repository's history."""
    git = shutil.which("git") or "git"
    found = subprocess.run([git, "-C", str(REPO), "cat-file", "-e",
                            f"{RELEASE_0_1_0}^{{commit}}"], capture_output=True, check=False)
    if found.returncode != 0:
        message = f"release 0.1.0 ({RELEASE_0_1_0[:7]}) is not in this clone's history"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run this test on a full clone")
        pytest.skip(message)
    archive = tmp_path / "release.tar"
    with archive.open("wb") as out:
        subprocess.run([git, "-C", str(REPO), "archive", "--format=tar", RELEASE_0_1_0],
                       stdout=out, check=True)
    code = tmp_path / "release-0.1.0"
    with tarfile.open(archive) as tar:
        tar.extractall(code, filter="data")
    archive.unlink()
    return code


def _broker(env: dict[str, str], *args: str, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *args], env={**os.environ, **env},
                          cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def _entries(url: str) -> list[tuple[int, str, str]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT seq, body, leaf_hash FROM audit_entries ORDER BY seq"))
        entries = [(int(r[0]), str(r[1]), str(r[2])) for r in rows]
    engine.dispose()
    return entries


def _same_cells(old: dict[str, Any], new: dict[str, Any]) -> None:
    def cells(answer: dict[str, Any]) -> dict[str, Any]:
        return {json.dumps(c["key"], sort_keys=True): c for c in answer["cells"]}

    before, after = cells(old), cells(new)
    assert before.keys() == after.keys()
    for key, cell in before.items():
        assert (after[key]["status"], after[key]["reason"]) == (cell["status"], cell["reason"])
        if cell["values"] is None:
            assert after[key]["values"] is None
            continue
        assert after[key]["values"].keys() == cell["values"].keys()
        for name, value in cell["values"].items():
            assert math.isclose(after[key]["values"][name], value, rel_tol=1e-12), (key, name)
    assert new["suppressed"] == old["suppressed"]


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'broker.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_release_0_1_0_upgrades_and_answers_as_before(tmp_path: Path, database: str) -> None:
    old_code = _release_code(tmp_path)
    env = {"BROKER_DATA_DIR": str(tmp_path / "data"), "BROKER_JWT_SECRET": SECRET,
           "BROKER_DATABASE_URL": database}
    old_env = {**env, "PYTHONPATH": str(old_code)}
    dump = tmp_path / "old.json"

    # Release 0.1.0 makes the database and the data directory, and answers.
    with broker_server(tmp_path, old_env, cwd=old_code, log_name="old.log") as base:
        made = subprocess.run(
            [sys.executable, "-c", OLD_CLIENT, base, str(dump), json.dumps(QUERIES)],
            env={**os.environ, **old_env}, cwd=old_code, capture_output=True, text=True,
            timeout=600, check=False)
        assert made.returncode == 0, made.stderr[-3000:]
    old = json.loads(dump.read_text())
    old_entries = _entries(database)
    assert len(old_entries) > 20
    published = sorted((tmp_path / "data" / "checkpoints").glob("*.checkpoint"))
    assert published, "release 0.1.0 published no checkpoint"

    # This code refuses the database until it is upgraded.
    refused = _broker(env, "serve", "--port", "1")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "broker db upgrade" in refused.stderr
    upgraded = _broker(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "release 0.1.0 (unversioned) ->" in upgraded.stdout
    assert _broker(env, "db", "status").returncode == 0

    # The old entries are all there, unchanged, and the log verifies against the old
    # checkpoints (still in the checkpoint directory) as well as its own.
    assert _entries(database)[: len(old_entries)] == old_entries
    verified = _broker(env, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    from broker.cli.token import minter
    from broker.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", jwt_secret=SecretStr(SECRET),
                        database_url=database)
    mint = minter(settings, ttl=600)
    econ = mint(*ACTORS["econ"])
    auditor = mint(*ACTORS["auditor"])
    with broker_server(tmp_path, env, log_name="new.log") as base, \
            httpx.Client(base_url=base, timeout=300) as client:
        for (contract, body), before in zip(QUERIES, old["answers"], strict=True):
            again = client.post("/v1/queries/aggregate", headers=_headers(econ),
                                json={"contract_id": old["contracts"][contract], **body})
            assert again.status_code == 200, again.text
            _same_cells(before, again.json())
        fresh = client.post("/v1/queries/aggregate", headers=_headers(econ),
                            json={"contract_id": old["contracts"]["electricity"], **NEW_QUERY})
        assert fresh.status_code == 200, fresh.text
        published_cells = [c for c in fresh.json()["cells"] if c["status"] == "published"]
        assert published_cells
        for cell in published_cells:
            (value,) = cell["values"].values()
            assert math.isclose(value, old["truth"][cell["key"]["town"]], rel_tol=1e-9)
        verify = client.get("/v1/audit/verify", headers=_headers(auditor))
        assert verify.status_code == 200, verify.text
        assert verify.json()["valid"] is True
    assert _entries(database)[: len(old_entries)] == old_entries
    shutil.rmtree(old_code)
