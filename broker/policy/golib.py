"""The real OPA Go engine in process (opa-golib-python-bindings), and the Rego test runner.

The bindings wrap OPA's Go ``rego`` package through ctypes. They declare Python >= 3.14 but
load and evaluate correctly on 3.11; the test setup installs them with
``pip install --ignore-requires-python`` (Makefile), so they are a development tool here: the
reference engine every decision case is checked against, and the runner of ``*_test.rego``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.policy.bundle import PolicySources
from broker.policy.worker import InProcessEngine

INSTALL_HINT = (
    "the OPA Go engine is not installed: run 'make install', or "
    "'pip install --ignore-requires-python opa-golib-python-bindings==0.4.4'"
)


class GoEngineMissing(RuntimeError):
    """opa-golib-python-bindings is not installed in this environment."""


def _new_engine() -> Any:
    try:
        from opa_bindings import OpaEngine
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise GoEngineMissing(INSTALL_HINT) from exc
    return OpaEngine()


class GoPolicyEngine(InProcessEngine):
    """Evaluates the policy directory with OPA's own Go implementation of Rego."""

    name = "opa-go"

    def __init__(self, policy_dir: Path, *, timeout: float = 2.0) -> None:
        sources = PolicySources.load(policy_dir)
        self._engine = _new_engine()
        for name, text in sources.modules.items():
            self._engine.add_policy(name, text)
        self._engine.add_data(sources.document)
        super().__init__("opa-go", sources.revision, timeout)

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any:
        """The value of ``data.<entrypoint>``; Unavailable when undefined or on any failure."""
        return self._call(self._run, entrypoint, input)

    def _run(self, entrypoint: str, input: Mapping[str, Any]) -> Any:
        document = json.loads(json.dumps(input, allow_nan=False))
        return self._engine.eval_document(entrypoint.replace("/", "."), document)

    def close(self) -> None:
        """Stop the worker and release the Go engine."""
        super().close()
        self._engine.close()


_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class RegoTest:
    """The outcome of one ``test_*`` rule."""

    module: str
    name: str
    passed: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RegoTestReport:
    """Every test's outcome and the line coverage of the policy modules (tests excluded)."""

    tests: list[RegoTest]
    coverage: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[RegoTest]:
        """The tests that did not pass."""
        return [t for t in self.tests if not t.passed]


def run_rego_tests(policy_dir: Path) -> RegoTestReport:
    """Run every ``test_*`` rule of every ``*_test.rego`` module on the Go engine.

    Each test package is evaluated whole (with coverage); a test rule absent from the result
    failed. A package that raises is re-run rule by rule so each error is named.
    """
    sources = PolicySources.load(policy_dir)
    engine = _new_engine()
    try:
        for name, text in {**sources.modules, **sources.tests}.items():
            engine.add_policy(name, text)
        engine.add_data(sources.document)
        results: list[RegoTest] = []
        covered: dict[str, set[int]] = {}
        uncovered: dict[str, set[int]] = {}
        for module, text in sorted(sources.tests.items()):
            package = _PACKAGE.search(text)
            names = list(dict.fromkeys(_TEST_RULE.findall(text)))
            if package is None:
                results.append(RegoTest(module, "<package>", False, "no package clause"))
                continue
            path = package.group(1)
            try:
                values = engine.eval_document(path, {}, coverage=True)
                _merge_coverage(engine.last_coverage, covered, uncovered)
                results += [RegoTest(module, n, values.get(n) is True) for n in names]
            except Exception:
                results += [_one(engine, module, path, n) for n in names]
        coverage = {
            f: 100.0 * len(covered.get(f, set()))
            / max(1, len(covered.get(f, set()) | uncovered.get(f, set())))
            for f in sorted(sources.modules)
        }
        return RegoTestReport(results, coverage)
    finally:
        engine.close()


def _one(engine: Any, module: str, package: str, name: str) -> RegoTest:
    try:
        return RegoTest(module, name, engine.eval_document(f"{package}.{name}", {}) is True)
    except Exception as exc:
        return RegoTest(module, name, False, str(exc)[:500])


def _merge_coverage(report: Any, covered: dict[str, set[int]],
                    uncovered: dict[str, set[int]]) -> None:
    """Fold one evaluation's coverage into per-file sets of covered and uncovered rows."""
    if not isinstance(report, dict):
        return
    for file, spans in (report.get("files") or {}).items():
        for key, into in (("covered", covered), ("not_covered", uncovered)):
            rows = into.setdefault(file, set())
            for span in spans.get(key) or []:
                rows.update(range(span["start"]["row"], span["end"]["row"] + 1))
    for file in covered:
        uncovered.get(file, set()).difference_update(covered[file])
