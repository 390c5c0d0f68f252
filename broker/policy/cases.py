"""Decision cases: inputs and the decisions the policies must give, shared by every engine.

A file under ``policies/cases/`` is either a list of ``{name, input, expect}`` for the
entrypoint ``broker/<file stem>/decision``, or an object with ``entrypoint``, a ``base`` input
and ``cases``. Each case gives a whole ``input``, or a ``patch`` applied to the base as a JSON
merge patch (RFC 7396: objects merge, ``null`` removes a key, anything else replaces).
``expect`` names the decision's keys that must be equal; sets (reasons) are compared sorted.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class DecisionCase:
    """One input and the parts of the decision it must get."""

    file: str
    name: str
    entrypoint: str
    input: dict[str, Any]
    expect: dict[str, Any]

    def mismatches(self, decision: Any) -> dict[str, Any]:
        """The expected keys the decision gets wrong, with what it gave instead."""
        got = decision if isinstance(decision, dict) else {}
        return {k: got.get(k) for k, v in self.expect.items() if _norm(got.get(k)) != _norm(v)}


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with the RFC 7396 merge ``patch`` applied (neither argument is changed)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def load_cases(policy_dir: Path) -> list[DecisionCase]:
    """Every case of every file under ``policy_dir/cases``, in file then listed order."""
    cases: list[DecisionCase] = []
    for path in sorted((policy_dir / "cases").glob("*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(raw, list):
            entrypoint, base, items = f"broker/{path.stem}/decision", None, raw
        else:
            entrypoint, base, items = raw["entrypoint"], raw["base"], raw["cases"]
        for item in items:
            if "input" in item or base is None:
                document = item["input"]
            else:
                document = merge_patch(base, item.get("patch", {}))
            cases.append(DecisionCase(path.name, item["name"], item.get("entrypoint", entrypoint),
                                      document, item["expect"]))
    names = [(c.file, c.name) for c in cases]
    if len(names) != len(set(names)):
        raise ValueError("decision case names must be unique within a file")
    return cases


def _norm(value: Any) -> Any:
    """Lists of strings compare as sets (Rego sets arrive as arrays in engine order)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value
