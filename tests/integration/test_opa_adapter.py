"""The ``opa`` adapter over real loopback HTTP, against the fake OPA test fixture (which
evaluates with the OPA Go engine): uploads, decisions, and every way it must fail closed."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from broker.domain.errors import Unavailable
from broker.policy.decisions import Policies
from broker.policy.opa import OpaServerPolicyEngine
from policies import POLICY_DIR
from tests.fake_opa import FakeOpa, running_fake_opa

DECISION = "broker/authz/decision"
ADMIN_REGISTERS = {"action": "org.register", "principal": {"org": "op", "roles": ["admin"]},
                   "resource": {}}


@pytest.fixture
def opa() -> Iterator[tuple[str, FakeOpa]]:
    with running_fake_opa() as served:
        yield served


def test_push_uploads_every_module_and_the_data(opa: tuple[str, FakeOpa]) -> None:
    url, state = opa
    engine = OpaServerPolicyEngine(url, POLICY_DIR, push=True)
    assert set(state.modules) == {"broker/authz.rego", "broker/flow.rego", "broker/query.rego"}
    assert state.data["policy"] == {"revision": engine.revision}
    assert "purposes" in state.data["config"]
    assert engine.evaluate(DECISION, ADMIN_REGISTERS)["allow"] is True
    assert engine.healthy()


def test_without_policies_the_decision_is_undefined_and_refused(
        opa: tuple[str, FakeOpa]) -> None:
    url, _ = opa
    engine = OpaServerPolicyEngine(url, POLICY_DIR)  # nothing pushed: OPA answers {}
    with pytest.raises(Unavailable, match="no decision"):
        engine.evaluate(DECISION, ADMIN_REGISTERS)


def test_a_slow_server_times_out(opa: tuple[str, FakeOpa]) -> None:
    url, state = opa
    engine = OpaServerPolicyEngine(url, POLICY_DIR, push=True, timeout=0.2)
    state.delay = 1.0
    with pytest.raises(Unavailable, match="timed out"):
        engine.evaluate(DECISION, ADMIN_REGISTERS)


@pytest.mark.parametrize("status", [500, 502, 400, 404])
def test_an_http_error_is_refused(opa: tuple[str, FakeOpa], status: int) -> None:
    url, state = opa
    engine = OpaServerPolicyEngine(url, POLICY_DIR, push=True)
    state.fail_status = status
    with pytest.raises(Unavailable):
        engine.evaluate(DECISION, ADMIN_REGISTERS)
    assert not engine.healthy()


def test_a_closed_port_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    engine = OpaServerPolicyEngine(f"http://127.0.0.1:{port}", POLICY_DIR, timeout=0.5)
    with pytest.raises(Unavailable):
        engine.evaluate(DECISION, ADMIN_REGISTERS)
    assert not engine.healthy()


def test_a_server_running_other_policies_is_refused(opa: tuple[str, FakeOpa]) -> None:
    """A stale bundle answers well-formed decisions; the revision in them gives it away."""
    url, state = opa
    engine = OpaServerPolicyEngine(url, POLICY_DIR, push=True)
    state.put_data("/policy", {"revision": "0123456789abcdef"})
    with pytest.raises(Unavailable, match="another policy revision"):
        Policies(engine).flow({})


def test_a_pushed_module_that_does_not_compile_is_reported(opa: tuple[str, FakeOpa],
                                                           tmp_path: object) -> None:
    import shutil
    from pathlib import Path

    broken = Path(str(tmp_path)) / "policies"
    shutil.copytree(POLICY_DIR, broken)
    (broken / "broker" / "extra.rego").write_text("package broker.extra\n\nx := \n")
    url, _ = opa
    with pytest.raises(Unavailable, match="refused the policies"):
        OpaServerPolicyEngine(url, broken, push=True)


@pytest.mark.parametrize("url", ["ftp://host:1", "http://host:1/prefix", "host:8181", ""])
def test_urls_the_client_cannot_honour_are_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="BROKER_OPA_URL"):
        OpaServerPolicyEngine(url, POLICY_DIR)
