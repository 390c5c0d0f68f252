"""Policy sources on disk and their revision (a content hash of the policy directory)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Rules the broker queries; each is a ``decision`` object built by its package.
ENTRYPOINTS = ("broker/authz/decision", "broker/flow/decision")


@dataclass(frozen=True, slots=True)
class PolicySources:
    """The Rego modules (tests excluded) and the data document of one policy directory."""

    modules: dict[str, str]
    data: dict[str, Any]
    revision: str

    @classmethod
    def load(cls, policy_dir: Path) -> PolicySources:
        """Read every ``*.rego`` (not ``*_test.rego``) and ``data.json`` under ``policy_dir``."""
        files = sorted(
            p for p in policy_dir.rglob("*") if p.is_file() and p.suffix in (".rego", ".json")
        )
        digest = hashlib.sha256()
        modules: dict[str, str] = {}
        data: dict[str, Any] = {}
        for path in files:
            rel = path.relative_to(policy_dir).as_posix()
            content = path.read_bytes()
            digest.update(rel.encode() + b"\x00" + content + b"\x00")
            if path.suffix == ".rego" and not path.name.endswith("_test.rego"):
                modules[rel] = content.decode("utf-8")
            elif path.name == "data.json" and path.parent == policy_dir:
                data = json.loads(content)
        if not modules:
            raise FileNotFoundError(f"no Rego modules under {policy_dir}")
        return cls(modules=modules, data=data, revision=digest.hexdigest()[:16])
