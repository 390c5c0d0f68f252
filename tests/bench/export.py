"""Benchmark: ``broker audit export`` and ``broker audit verify --export`` on a large log.

Run: .venv/bin/python -m tests.bench.export [--entries N] [--tail T]

A SQLite database of ``--entries`` entries (written straight into the tables, as appends would
leave them) has checkpoints signed with the broker's own key every 1000 entries except over the
last ``--tail`` entries, as a running server leaves it between two checkpoints. Timed, each as
the command an operator runs (a new process, so start-up is included):

- ``broker audit export --output F``: signs a checkpoint over the tail (through the
  Checkpointer, copied to the checkpoint directory), then writes the export; then again, with
  nothing left to sign;
- ``broker audit verify --export F --pubkey K``, plain and ``--deep``.

The raw baselines, in the same run: plain sqlite3 reading the same rows in seq order and
writing them as lines (what an export costs without the broker), and SHA-256 of every line of
the export once (what a verification cannot do with less). Everything is written under one
scratch directory, removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from audit.checkpoint import Checkpoint
from audit.merkle import Frontier
from broker.settings import Settings
from broker.store.db import make_engine
from broker.store.keys import checkpoint_signer
from broker.store.uow import SqlUnitOfWork
from tests.bench.audit import _clock, _load_db, _log


def _timed(args: list[str], env: dict[str, str]) -> float:
    """Seconds ``python -m broker.cli ARGS`` takes; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "broker.cli", *args], env=env,
                          capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"broker {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stderr.decode(errors='replace')}")
    return elapsed


def _raw_export(db: Path, out: Path) -> float:
    """Seconds plain sqlite3 takes to write every entry's body as a line, in seq order."""
    start = time.perf_counter()
    conn = sqlite3.connect(db)
    with open(out, "wb") as fh:
        for (body,) in conn.execute("SELECT body FROM audit_entries ORDER BY seq"):
            fh.write(body.encode() + b"\n")
    conn.close()
    return time.perf_counter() - start


def _raw_hash(path: Path) -> float:
    """Seconds to SHA-256 every line of ``path`` once."""
    start = time.perf_counter()
    with open(path, "rb") as fh:
        for line in fh:
            hashlib.sha256(b"\x00" + line.rstrip(b"\n")).digest()
    return time.perf_counter() - start


def _line(name: str, seconds: float, n: int, base: float | None = None) -> None:
    ratio = f"  ({seconds / base:.2f}x raw)" if base else ""
    print(f"{name:52} {seconds:7.2f} s  {n / seconds:9,.0f} entries/s{ratio}")


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--tail", type=int, default=500,
                        help="entries after the last stored checkpoint")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="broker-export-bench-"))
    try:
        _run(workdir, args.entries, args.tail)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # database, keys, exports: leave nothing


def _run(workdir: Path, n: int, tail: int) -> None:
    """Build the log, then time the exports and verifications, every file under ``workdir``."""
    settings = Settings(data_dir=workdir / "var")
    env = {**os.environ, "BROKER_DATA_DIR": str(settings.data_dir)}
    print(f"# {os.cpu_count()} CPUs; scratch {workdir} (removed at the end)")
    bodies, leaves = _log(n)
    _load_db(settings.db_url, bodies, leaves)
    signer = checkpoint_signer(settings)
    frontier, signed = Frontier(), 0
    engine = make_engine(settings.db_url)
    with SqlUnitOfWork(engine, _clock) as uow:
        for i, leaf in enumerate(leaves[:n - tail], start=1):
            frontier.add(leaf)
            if i % 1000 == 0 or i == n - tail:
                note = signer.checkpoint(Checkpoint(signer.name, i, frontier.root()))
                uow.audit.add_checkpoint(i, frontier.root(), note)
                signed += 1
        uow.commit()
    engine.dispose()
    del bodies, leaves
    db = settings.data_dir / "broker.db"
    pub = settings.checkpoint_key_path.with_suffix(".pub")
    print(f"# {n:,} entries, {signed} signed checkpoints, the last {tail} entries after them; "
          f"database {db.stat().st_size / 1e6:.0f} MB")

    raw = _raw_export(db, workdir / "raw.jsonl")
    _line("raw: sqlite3 SELECT body ORDER BY seq, to a file", raw, n)
    export = workdir / "export.jsonl"
    first = _timed(["audit", "export", "--output", str(export)], env)
    _line("broker audit export (signs the tail first)", first, n, raw)
    again = _timed(["audit", "export", "--output", str(workdir / "again.jsonl")], env)
    _line("broker audit export (nothing to sign)", again, n, raw)
    print(f"  export {export.stat().st_size / 1e6:.0f} MB; "
          f"{len(list(settings.checkpoints_path.glob('*.checkpoint')))} checkpoint copy "
          "written outside the database")

    hashing = _raw_hash(export)
    _line("raw: SHA-256 of every export line once", hashing, n)
    verify = ["audit", "verify", "--export", str(export), "--pubkey", str(pub)]
    _line("broker audit verify --export", _timed(verify, env), n, hashing)
    _line("broker audit verify --export --deep", _timed([*verify, "--deep"], env), n, hashing)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "broker.cli", "--help"], env=env,
                   capture_output=True, check=True)
    print(f"  (of which starting the command: {time.perf_counter() - start:.2f} s)")


if __name__ == "__main__":
    main()
