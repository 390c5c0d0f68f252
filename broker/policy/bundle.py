"""Policy sources on disk and their revision (a content hash of the policy directory)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Rules the broker queries; each is a ``decision`` object built by its package.
ENTRYPOINTS = ("broker/authz/decision", "broker/flow/decision", "broker/flow/terms",
               "broker/query/decision")

#: Where every engine finds the revision of the policies it evaluates; each ``decision``
#: returns it, so an answer from an engine running other policies is recognised and refused.
REVISION_ROOT = "policy"

#: The top-level names the policies own: packages, ``data.json`` and the revision document.
ROOTS = ("broker", "config", REVISION_ROOT)


@dataclass(frozen=True, slots=True)
class PolicySources:
    """The Rego modules, the Rego unit tests and the data document of one policy directory.

    The revision hashes every ``*.rego`` and ``*.json`` under the directory (decision cases and
    tests included) with their relative paths, so any change to what the policies are or are
    proven to do makes a new revision.
    """

    modules: dict[str, str]
    tests: dict[str, str]
    data: dict[str, Any]
    revision: str

    @classmethod
    def load(cls, policy_dir: Path) -> PolicySources:
        """Read every ``*.rego`` and ``data.json`` under ``policy_dir``."""
        files = sorted(
            p for p in policy_dir.rglob("*") if p.is_file() and p.suffix in (".rego", ".json")
        )
        digest = hashlib.sha256()
        modules: dict[str, str] = {}
        tests: dict[str, str] = {}
        data: dict[str, Any] = {}
        for path in files:
            rel = path.relative_to(policy_dir).as_posix()
            content = path.read_bytes()
            digest.update(rel.encode() + b"\x00" + content + b"\x00")
            if path.name.endswith("_test.rego"):
                tests[rel] = content.decode("utf-8")
            elif path.suffix == ".rego":
                modules[rel] = content.decode("utf-8")
            elif path.name == "data.json" and path.parent == policy_dir:
                data = json.loads(content)
        if not modules:
            raise FileNotFoundError(f"no Rego modules under {policy_dir}")
        if REVISION_ROOT in data:
            raise ValueError(f"data.json may not define '{REVISION_ROOT}': the revision goes there")
        return cls(modules=modules, tests=tests, data=data, revision=digest.hexdigest()[:16])

    @property
    def document(self) -> dict[str, Any]:
        """The data every engine loads: ``data.json`` plus the revision document."""
        return {**self.data, REVISION_ROOT: {"revision": self.revision}}
