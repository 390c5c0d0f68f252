"""The vendored front-end files are the ones their README names, byte for byte."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

VENDOR = Path(__file__).parents[2] / "broker/console/static/vendor"
ROWS = re.findall(r"^\| `([^`]+)` \| .*? \| ([0-9a-f]{64}) \|", (VENDOR / "README.md").read_text(),
                  re.M)


def test_the_readme_lists_every_vendored_file() -> None:
    listed = {name for name, _ in ROWS}
    present = {p.name for p in VENDOR.iterdir() if p.name != "README.md"}
    assert listed
    assert listed == present


@pytest.mark.parametrize(("name", "digest"), ROWS)
def test_a_vendored_file_has_the_hash_its_readme_names(name: str, digest: str) -> None:
    assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest
