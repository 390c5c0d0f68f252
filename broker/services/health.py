"""Use case: how the broker is, for its operator (what ``/readyz`` and the metrics report).

The report names the policy revision, whether the database answers and the policy engine
decides (each probed on its own, within a time limit), the engine's kind and the audit
checkpointer's lag; it never carries a setting's value beyond the engine's kind (no URL, no
secret, no path).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from threading import Lock

from broker.services.checkpoints import Checkpointer

#: Seconds each probe may take before it counts as failed.
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe's outcome: passed or not, and a short stable reason when not."""

    ok: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Health:
    """The operator's view of the broker's state."""

    database: Probe
    policy: Probe
    policy_revision: str
    engine_kind: str
    #: Entries no signed checkpoint covers yet (None before the checkpointer's first look).
    unsigned_entries: int | None
    #: When the latest checkpoint was signed (None before the first).
    latest_signed: datetime | None
    #: Whether this process is the periodic checkpoint signer.
    signer: bool
    #: Rounds of signing or publishing that failed since the start.
    checkpoint_failures: int

    @property
    def ready(self) -> bool:
        """Whether ``/readyz`` would answer ready: the database answers and the engine decides."""
        return self.database.ok and self.policy.ok


@dataclass(frozen=True, slots=True)
class HealthService:
    """Probes the database and the policy engine and reads the checkpointer's lag.

    The probes run on two threads of the service's own, at most one probe per dependency at a
    time: a dependency that hangs keeps its thread, and the next reports share that probe
    (and wait for it again) rather than start another, so an operator reloading the page while
    the database hangs does not pile up threads."""

    database: Callable[[], None]
    policy: Callable[[], str]
    revision: Callable[[], str]
    engine_kind: str
    checkpointer: Checkpointer
    _pool: ThreadPoolExecutor = field(
        init=False, repr=False, compare=False,
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    _running: dict[str, Future[object]] = field(init=False, repr=False, compare=False,
                                                default_factory=dict)
    _lock: Lock = field(init=False, repr=False, compare=False, default_factory=Lock)

    def report(self) -> Health:
        """Probe both dependencies (at most ``PROBE_TIMEOUT`` seconds each) and read the lag."""
        database = self._probe("database", self.database)
        policy = self._probe("policy", self.policy)
        db_probe = _outcome(database)
        policy_probe = _outcome(policy)
        lag = self.checkpointer.lag()
        unsigned, signed_at = lag if lag is not None else (None, None)
        return Health(
            database=db_probe,
            policy=policy_probe,
            policy_revision=self.revision(),
            engine_kind=self.engine_kind,
            unsigned_entries=unsigned,
            latest_signed=(datetime.fromtimestamp(signed_at, UTC)
                           if signed_at is not None else None),
            signer=self.checkpointer.leader,
            checkpoint_failures=self.checkpointer.failures,
        )

    def _probe(self, name: str, probe: Callable[[], object]) -> Future[object]:
        """The probe of ``name`` under way, started now if none is."""
        with self._lock:
            running = self._running.get(name)
            if running is None or running.done():
                running = self._pool.submit(probe)
                self._running[name] = running
            return running

    def close(self) -> None:
        """Stop the probe threads (a probe under way finishes on its own)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _outcome(future: Future[object]) -> Probe:
    """A probe's outcome: its exception's class names the failure, never its message (which
    may quote a URL or a query)."""
    try:
        future.result(timeout=PROBE_TIMEOUT)
    except FutureTimeout:
        return Probe(ok=False, reason="timeout")
    except Exception as exc:
        return Probe(ok=False, reason=type(exc).__name__)
    return Probe(ok=True)
