"""In-process Rego evaluation with regopy (rego-cpp) over a prepared bundle."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import regopy

from broker.domain.errors import Unavailable
from broker.policy.bundle import ENTRYPOINTS, PolicySources
from broker.policy.worker import InProcessEngine


class EmbeddedPolicyEngine(InProcessEngine):
    """Compiles the policy directory once and evaluates entrypoints against it.

    A regopy interpreter keeps its input as state, so evaluations run one at a time on one
    worker thread, each within ``timeout`` seconds. An authz decision takes about 0.3 ms and
    a flow decision about 3 ms (tests/bench/policy.py); the decision cache spares repeats, and
    the flow decision's terms part is cached whatever the moment (Policies.flow_at).
    """

    name = "regopy"

    def __init__(self, policy_dir: Path, *, timeout: float = 2.0) -> None:
        sources = PolicySources.load(policy_dir)
        builder = regopy.Interpreter()
        builder.add_data(sources.document)
        for name, text in sources.modules.items():
            builder.add_module(name, text)
        self._bundle = builder.build(None, list(ENTRYPOINTS))
        self._interpreter = regopy.Interpreter()
        super().__init__("regopy", sources.revision, timeout)

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any:
        """The value of ``entrypoint`` for ``input``; Unavailable on any failure or timeout."""
        ok, text = self._call(self._run, entrypoint, input)
        if not ok:
            raise Unavailable("The policy engine returned an error; nothing was released.")
        values = json.loads(text)
        if not isinstance(values, list) or len(values) != 1:
            raise Unavailable("The policy gave no decision; nothing was released.")
        return values[0]

    def _run(self, entrypoint: str, input: Mapping[str, Any]) -> tuple[bool, str]:
        # Built node by node (regopy.Input) rather than parsed from JSON text: about half the
        # cost for a flow input (tests/bench/policy.py). A value Input would not convert
        # exactly (an integer beyond 64 bits, which ctypes wraps) goes the JSON way.
        if _exact(input):
            self._interpreter.set_input(regopy.Input(input))
        else:
            self._interpreter.set_input_term(json.dumps(input, allow_nan=False))
        output = self._interpreter.query_bundle_entrypoint(self._bundle, entrypoint)
        ok = bool(output.ok())
        return ok, output.expressions().json() if ok else ""


_INT64 = 2**63


def _exact(value: Any) -> bool:
    """Whether ``value`` is JSON data that regopy.Input converts exactly: integers within 64
    bits, finite numbers, strings and keys without a NUL (Input cuts a string at one), lists
    and tuples as arrays."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, int):
        return -_INT64 <= value < _INT64
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and "\x00" not in k and _exact(v)
                   for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_exact(v) for v in value)
    return False
