"""A real ``broker serve`` process on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from broker.cli.serving import free_port


@contextmanager
def broker_server(tmp_path: Path, env: Mapping[str, str], *, unset: tuple[str, ...] = (),
                  args: Sequence[str] = (), log_name: str = "server.log",
                  cwd: Path | None = None, port: int | None = None) -> Iterator[str]:
    """Start the broker with ``env`` added to this process's environment (less ``unset``) and
    ``args`` added to ``broker serve``, on ``port`` (default: a free one); yield its base URL once
    it is ready (its log is ``tmp_path/log_name``); stop it (SIGTERM, a graceful shutdown) on
    exit."""
    port = port or free_port()
    log_path = tmp_path / log_name
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port",
             str(port), *args],
            env={k: v for k, v in {**os.environ, **env}.items() if k not in unset},
            stdout=log, cwd=cwd, stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text())
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=30)
