"""The broker's own spans (OpenTelemetry API only: use cases may import this module).

The tracer is process-wide, like logging: ``broker.observability.traces`` sets it when an app
starts tracing and clears it when the app stops. Without one, no span is made at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from opentelemetry import trace

ENGINE_SPAN = "broker.engine.run"

_tracer: trace.Tracer | None = None


def use(tracer: trace.Tracer | None) -> None:
    """Make the broker's spans with ``tracer`` (None: make none)."""
    global _tracer  # process-wide, see the module docstring
    _tracer = tracer


def _ignore(_rows: int) -> None:
    """Nothing to record: tracing is off."""


@contextmanager
def engine_span(engine: str, dataset_id: str) -> Iterator[Callable[[int], None]]:
    """A ``broker.engine.run`` span around one run of the query engine (none when tracing is
    off); yields a function that records the result's row count. Only ids and counts: never
    the SQL (its values are bound, but the plan is the consumer's query) or a value."""
    tracer = _tracer
    if tracer is None:
        yield _ignore
        return
    with tracer.start_as_current_span(ENGINE_SPAN, attributes={
            "broker.dataset.id": dataset_id, "broker.engine": engine}) as span:
        yield lambda rows: span.set_attribute("broker.result.rows", rows)
