"""The per-principal moving window and in-flight caps, on a clock the test moves."""

from __future__ import annotations

import pytest

from broker.api import limits as limits_module
from broker.api.limits import PrincipalLimits


@pytest.fixture
def clock() -> list[float]:
    return [1000.0]


def _admit(limits: PrincipalLimits, key: str = "alice") -> tuple[str, int] | None:
    refused = limits.acquire(key, "econ")
    if refused is None:
        limits.release(key, "econ")
    return refused


def test_every_window_of_the_rate_holds_and_says_when_to_retry(clock: list[float]) -> None:
    limits = PrincipalLimits("3/second;5/minute", 100, clock=lambda: clock[0])
    assert [_admit(limits) for _ in range(3)] == [None, None, None]
    assert _admit(limits) == ("rate-limited", 1)
    assert _admit(limits, "bob") is None  # another principal has its own window
    clock[0] += 1.01
    assert [_admit(limits) for _ in range(2)] == [None, None]
    refused = _admit(limits)  # five in the minute: the first leaves it 59 s from now
    assert refused is not None
    assert refused[0] == "rate-limited"
    assert 58 <= refused[1] <= 59
    clock[0] += 59.0  # as told
    assert _admit(limits) is None  # the first three left the minute window
    assert _admit(limits) is None
    assert _admit(limits) is None
    assert _admit(limits) == ("rate-limited", 1)


def test_refused_requests_do_not_count(clock: list[float]) -> None:
    limits = PrincipalLimits("2/minute", 100, clock=lambda: clock[0])
    assert [_admit(limits) for _ in range(2)] == [None, None]
    for _ in range(50):
        assert _admit(limits) is not None
        clock[0] += 1
    clock[0] += 10.5  # 60.5 s after the first two: both have left, despite the refusals
    assert _admit(limits) is None


def test_in_flight_caps_per_principal_and_per_organisation() -> None:
    limits = PrincipalLimits("", 2, 3)
    assert limits.acquire("a", "econ") is None
    assert limits.acquire("a", "econ") is None
    assert limits.acquire("a", "econ") == ("too-many-concurrent-requests", 1)
    assert limits.acquire("b", "econ") is None
    assert limits.acquire("c", "econ") == ("too-many-concurrent-requests", 1)
    assert limits.acquire("c", "env") is None
    limits.release("a", "econ")
    assert limits.acquire("c", "econ") is None


def test_idle_principals_are_forgotten(clock: list[float], monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    monkeypatch.setattr(limits_module, "SWEEP_EVERY", 10)
    limits = PrincipalLimits("100/minute", 8, clock=lambda: clock[0])
    for i in range(9):
        _admit(limits, f"user-{i}")
    clock[0] += 61
    _admit(limits, "late")  # the tenth count sweeps
    assert _admit(limits, "user-0") is None
    assert len(limits._times) == 2  # "late" and "user-0" again
