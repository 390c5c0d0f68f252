"""The use cases behind the auditor's and the operator's pages: counting denials per day and
the health report (a failing or hanging dependency is reported, by class name only)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.app import Container
from broker.services import health as health_module
from broker.services.audit import AuditItem, count_denials
from broker.services.checkpoints import DirectorySink
from broker.services.health import HealthService


def item(seq: int, ts: str, org: str, allowed: bool, *reasons: str) -> AuditItem:
    """An entry with only what counting reads."""
    return AuditItem(entry={"seq": seq, "ts": ts, "actor": {"org": org},
                            "decision": {"allowed": allowed, "reasons": list(reasons)}},
                     leaf_hash="0" * 64)


def test_denials_are_counted_per_day_by_reason_and_by_organisation() -> None:
    items = [
        item(1, "2026-03-01T08:00:00.000000Z", "econ", False, "purpose-not-in-contract"),
        item(2, "2026-03-01T09:00:00.000000Z", "econ", False, "purpose-not-in-contract",
             "contract-not-active"),
        item(3, "2026-03-02T09:00:00.000000Z", "env", False, "daily-quota-exhausted"),
        item(4, "2026-03-02T10:00:00.000000Z", "env", True),  # an allowed one is not counted
    ]
    found = count_denials(items, since="2026-03-01", until=None, cap=10)
    assert found.by_reason == {("2026-03-01", "purpose-not-in-contract"): 2,
                               ("2026-03-01", "contract-not-active"): 1,
                               ("2026-03-02", "daily-quota-exhausted"): 1}
    assert found.by_org == {("2026-03-01", "econ"): 2, ("2026-03-02", "env"): 1}
    assert found.days == ["2026-03-01", "2026-03-02"]
    assert not found.truncated


def test_denials_beyond_the_cap_are_not_counted_and_the_window_says_so() -> None:
    items = [item(i, f"2026-03-0{i}T00:00:00.000000Z", "econ", False, "r") for i in (1, 2, 3)]
    found = count_denials(items, since="2026-03-01", until=None, cap=2)
    assert found.truncated
    assert found.entries == 2
    assert found.days == ["2026-03-01", "2026-03-02"]


@pytest.fixture
def container(client: TestClient) -> Container:
    """The running app's container."""
    found = client.app.state.container  # type: ignore[attr-defined]
    assert isinstance(found, Container)
    return found


def test_the_health_report_of_a_working_broker(container: Container) -> None:
    report = container.health.report()
    assert report.ready
    assert report.policy_revision == container.policies.revision
    assert report.engine_kind == "embedded"


def test_a_failing_database_is_reported_by_class_never_by_message(
        container: Container) -> None:
    def broken() -> None:
        raise ConnectionRefusedError("postgresql://broker:hunter2@db/broker refused")

    service = HealthService(database=broken, policy=container.policies.probe,
                            revision=lambda: container.policies.revision,
                            engine_kind="embedded", checkpointer=container.checkpointer)
    report = service.report()
    assert not report.ready
    assert (report.database.ok, report.database.reason) == (False, "ConnectionRefusedError")
    assert report.policy.ok
    assert "hunter2" not in repr(report)


def test_a_hanging_policy_engine_is_reported_as_a_timeout(
        container: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health_module, "PROBE_TIMEOUT", 0.2)
    release = threading.Event()

    def hangs() -> str:
        release.wait(5)
        return "never"

    service = HealthService(database=lambda: None, policy=hangs,
                            revision=lambda: container.policies.revision,
                            engine_kind="opa", checkpointer=container.checkpointer)
    started = time.monotonic()
    report = service.report()
    release.set()
    assert time.monotonic() - started < 2
    assert (report.policy.ok, report.policy.reason) == (False, "timeout")
    assert not report.ready


def test_a_hanging_database_holds_one_thread_however_often_the_report_is_asked(
        container: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health_module, "PROBE_TIMEOUT", 0.05)
    release = threading.Event()
    calls: list[int] = []

    def hangs() -> None:
        calls.append(1)
        release.wait(10)

    service = HealthService(database=hangs, policy=container.policies.probe,
                            revision=lambda: container.policies.revision,
                            engine_kind="embedded", checkpointer=container.checkpointer)
    try:
        for _ in range(8):  # an operator reloading the page while the database hangs
            assert service.report().database == health_module.Probe(ok=False, reason="timeout")
        probing = [t for t in threading.enumerate() if t.name.startswith("health")]
        assert len(calls) == 1  # the later reports waited on the probe under way
        assert len(probing) <= 2
        release.set()
        deadline = time.monotonic() + 5
        while service.report().database != health_module.Probe(ok=True):
            assert time.monotonic() < deadline  # the probe under way answers at last
            time.sleep(0.05)
        before = len(calls)
        assert service.report().database.ok
        assert len(calls) == before + 1  # a finished probe is not reused: the next probes anew
    finally:
        release.set()
        service.close()


def test_outside_copies_are_read_for_the_sizes_asked_only(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "checkpoints")
    assert sink.notes_for([1]) == []  # no directory yet
    for size in (1, 2, 3):
        sink.publish(size, f"note {size}\n")
    sink.publish(2, "another note 2\n")  # a conflicting copy, kept beside the first
    (tmp_path / "checkpoints" / f"{2:020d}.checkpoint.tmp").write_text("partial")
    found = sink.notes_for([2])
    assert sorted(note for note, _source in found) == ["another note 2\n", "note 2\n"]
    assert all(Path(source).name.startswith(f"{2:020d}.") for _note, source in found)
    assert [note for note, _source in sink.notes_for([1, 3])] == ["note 1\n", "note 3\n"]
