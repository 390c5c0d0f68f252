"""What an installed (not editable) broker needs besides its packages is declared as package
data: a migration left out would make every installed broker refuse its database."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_migration_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["broker.store"]
    store = ROOT / "broker" / "store"
    files = [p.relative_to(store).as_posix() for p in (store / "migrations").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert "migrations/env.py" in files
    assert any(f.startswith("migrations/versions/0001") for f in files)
    missing = [f for f in files if not any(fnmatch.fnmatchcase(f, g) for g in globs)]
    assert missing == []
