"""The vendored axe-core is the file its README names, byte for byte."""

from __future__ import annotations

import re

from tests.console.browser import VENDOR, sha256_of


def test_the_vendored_axe_core_matches_the_sha256_and_version_its_readme_records() -> None:
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    recorded = re.search(r"SHA-256 of `axe\.min\.js` \| `([0-9a-f]{64})`", readme)
    version = re.search(r"\| Version \| (\d+\.\d+\.\d+) \|", readme)
    assert recorded is not None
    assert version is not None
    assert sha256_of(VENDOR / "axe.min.js") == recorded.group(1)
    header = (VENDOR / "axe.min.js").read_text(encoding="utf-8")[:200]
    assert header.startswith(f"/*! axe v{version.group(1)}\n")
    assert "Mozilla Public\n * License, v. 2.0" in header
    assert "MPL-2.0" in readme
