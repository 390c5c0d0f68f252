"""Prometheus metrics of what the broker decides: queries, withheld cells, denials, the audit
log's appends and how far its signed checkpoints lag.

Every label takes values from a closed set: kinds and outcomes named here, suppression
reasons of the disclosure engine, refusal reasons that are stable kebab-case slugs (anything
else, and any reason past the first ``MAX_REASONS`` seen, is counted as ``other``). No label
ever holds an id, a name or a value.

Several worker processes: with ``PROMETHEUS_MULTIPROC_DIR`` set before the process starts,
prometheus_client keeps counters and histograms in files in that directory, and
``exposition()`` answers ``/metrics`` from all of them (``MultiProcessCollector``), so any
worker reports the sum over the workers. The checkpoint lag is read from the shared
database, so every worker reports the same value without sharing anything. The policy
decision cache is each process's own: its counters are exported only in single-process mode.
Empty the directory before the server starts (prometheus_client's rule), or counts of an
earlier run are added in.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from audit.entry import AuditEvent

#: Audit actions that are queries, and the ``kind`` label of each.
QUERY_KINDS = {
    "query.aggregate": "aggregate",
    "query.crosscheck": "crosscheck",
    "query.extract": "extract",
    "policy.explain": "explain",
}
#: Refusal reasons that say the broker failed, not that it said no.
FAILURES = frozenset({"engine-failed", "policy-engine-unavailable", "unavailable"})
#: Refused as malformed: counted as ``invalid``, not as a denial.
INVALID = "invalid-input"
#: Rate and concurrency refusals are counted where they are made (``denied``); their audit
#: entry (the first of a window) is not counted again.
LIMIT_ACTION = "request.limit"
#: The distinct reasons a process labels before it counts new ones as ``other``.
MAX_REASONS = 100
REASON = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
#: An append is a few SQL statements inside a transaction: well under a millisecond alone,
#: longer when it waits for the head lock behind other writers.
AUDIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5, 5.0)


def is_multiprocess() -> bool:
    """Whether prometheus_client keeps values in ``PROMETHEUS_MULTIPROC_DIR`` files (decided
    when it was first imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


@dataclass(frozen=True, slots=True)
class CheckpointLag:
    """Audit entries no signed checkpoint covers yet, and when the latest one was signed
    (seconds since the epoch; None before the first)."""

    entries: int
    signed_at: float | None


class BrokerMetrics:
    """The broker's collectors on a registry of their own (one per app keeps tests apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = is_multiprocess()
        self._reasons: set[str] = set()
        self._everywhere: list[Collector] = []  # scrape-time collectors true in any worker
        self.queries = Counter(
            "broker_queries_total", "Queries by kind (aggregate, crosscheck, extract, explain) "
            "and outcome (allowed, denied, invalid, failed), as audited",
            ["kind", "outcome"], registry=self.registry)
        self.withheld = Counter(
            "broker_cells_withheld_total", "Cells withheld by disclosure control, by reason",
            ["reason"], registry=self.registry)
        self.denials = Counter(
            "broker_denials_total", "Refusals by reason: policy, contract and limits",
            ["reason"], registry=self.registry)
        self.audit_append = Histogram(
            "broker_audit_append_seconds", "Time to append one audit entry (head lock "
            "included, commit excluded)", buckets=AUDIT_BUCKETS, registry=self.registry)

    def reason_label(self, reason: str) -> str:
        """``reason`` if it is a slug among the first ``MAX_REASONS`` seen, else ``other``."""
        if reason in self._reasons:
            return reason
        if REASON.fullmatch(reason) is None or len(self._reasons) >= MAX_REASONS:
            return "other"
        self._reasons.add(reason)
        return reason

    def audit_appended(self, event: AuditEvent, seconds: float) -> None:
        """Count one appended entry: its latency, and for a query or a refusal its outcome."""
        self.audit_append.observe(seconds)
        reasons = event.reasons
        if event.allowed:
            outcome = "allowed"
        elif INVALID in reasons:
            outcome = "invalid"
        elif FAILURES.intersection(reasons):
            outcome = "failed"
        else:
            outcome = "denied"
            if event.action != LIMIT_ACTION:
                for reason in reasons or ("unspecified",):
                    self.denied(reason)
        kind = QUERY_KINDS.get(event.action)
        if kind is not None:
            self.queries.labels(kind, outcome).inc()

    def denied(self, reason: str) -> None:
        """Count one refusal."""
        self.denials.labels(self.reason_label(reason)).inc()

    def cells_withheld(self, suppressed: Mapping[str, int]) -> None:
        """Count a released answer's withheld cells (``Release.suppressed``)."""
        for reason, count in suppressed.items():
            self.withheld.labels(self.reason_label(reason)).inc(count)

    def watch_checkpoints(self, lag: Callable[[], CheckpointLag | None]) -> None:
        """Export the checkpoint lag, read at scrape time from ``lag``."""
        collector = _CheckpointLagCollector(lag)
        self.registry.register(collector)
        self._everywhere.append(collector)

    def exposition(self) -> CollectorRegistry:
        """The registry ``/metrics`` renders: this one, or with several processes one that
        reads every process's files, plus the collectors that are true in any process."""
        if not self.multiprocess:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in self._everywhere:
            registry.register(collector)
        return registry


class _CheckpointLagCollector(Collector):
    """Two gauges computed when scraped."""

    def __init__(self, lag: Callable[[], CheckpointLag | None]) -> None:
        self._lag = lag

    def collect(self) -> Iterable[Metric]:
        """Entries not covered; seconds since the latest checkpoint (absent before one)."""
        lag = self._lag()
        if lag is None:
            return
        yield GaugeMetricFamily(
            "broker_audit_checkpoint_lag_entries",
            "Audit entries not yet covered by a signed checkpoint", value=lag.entries)
        if lag.signed_at is not None:
            yield GaugeMetricFamily(
                "broker_audit_checkpoint_age_seconds",
                "Seconds since the latest signed checkpoint",
                value=max(0.0, time.time() - lag.signed_at))
