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
from dataclasses import dataclass
from datetime import UTC, datetime

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
    """Probes the database and the policy engine and reads the checkpointer's lag."""

    database: Callable[[], None]
    policy: Callable[[], str]
    revision: Callable[[], str]
    engine_kind: str
    checkpointer: Checkpointer

    def report(self) -> Health:
        """Probe both dependencies (at most ``PROBE_TIMEOUT`` seconds each) and read the lag."""
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="health")
        try:
            database: Future[object] = pool.submit(self.database)
            policy: Future[object] = pool.submit(self.policy)
            db_probe = _outcome(database)
            policy_probe = _outcome(policy)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
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
