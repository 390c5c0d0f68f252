"""An OPA bundle (.tar.gz) of the policy directory, with a manifest naming its revision."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from broker.policy.bundle import ROOTS, PolicySources


def bundle_files(sources: PolicySources) -> dict[str, bytes]:
    """The files of the bundle: the Rego modules (tests excluded), ``data.json`` with the
    revision document, and ``.manifest`` with the revision and the roots the bundle owns."""
    files = {name: text.encode() for name, text in sources.modules.items()}
    files["data.json"] = json.dumps(sources.document, sort_keys=True).encode()
    files[".manifest"] = json.dumps(
        {"revision": sources.revision, "roots": list(ROOTS)}, sort_keys=True
    ).encode()
    return files


def write_bundle(policy_dir: Path, target: Path) -> str:
    """Write the bundle of ``policy_dir`` to ``target``; returns its revision.

    The archive is reproducible: fixed order, modes and times, so the same policies give the
    same bytes.
    """
    sources = PolicySources.load(policy_dir)
    files = bundle_files(sources)
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(files[name]))
    target.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return sources.revision
