"""An OPA bundle (.tar.gz) of the policy directory, with a manifest naming its revision."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from broker.policy.bundle import PolicySources

ROOTS = ["broker", "config"]


def write_bundle(policy_dir: Path, target: Path) -> str:
    """Write the bundle of ``policy_dir`` to ``target``; returns its revision.

    The bundle holds the Rego modules (tests excluded), ``data.json`` and ``.manifest`` with
    the revision (the content hash every audit entry records) and the roots the bundle owns.
    """
    sources = PolicySources.load(policy_dir)
    files = {name: text.encode() for name, text in sources.modules.items()}
    files["data.json"] = json.dumps(sources.data, sort_keys=True).encode()
    files[".manifest"] = json.dumps({"revision": sources.revision, "roots": ROOTS}).encode()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return sources.revision
