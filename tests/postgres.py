"""A throwaway PostgreSQL server for the test session, and a fresh database for each test.

``postgres_server`` (session scope) finds Debian's server binaries under
``/usr/lib/postgresql/*/bin`` (installing the ``postgresql`` package with apt-get when they are
missing and we are root), initialises a cluster in a new temporary directory, and starts it
listening on 127.0.0.1 only, on a free port, with its unix socket inside that directory and
trust authentication. PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` system user and every server command runs through ``runuser``. At the end of the
session the server is stopped (``pg_ctl stop -m fast``) and the directory removed.

``postgres_url`` (function scope) creates a database with a unique name on that server and
yields its SQLAlchemy URL (``postgresql+psycopg://...``); it is dropped after the test.

When no server can be had the fixtures skip, except under CI (the ``CI`` variable set), where
they fail: CI must not silently lose the PostgreSQL tests.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest

SERVER_USER = "postgres"
START_TIMEOUT = 60  # seconds, for initdb and for pg_ctl start each
STOP_TIMEOUT = 30
INSTALL_TIMEOUT = 900
_TOOLS = ("initdb", "pg_ctl", "postgres")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started; the message says why."""


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no server log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding initdb, pg_ctl and postgres."""
    found = []
    for candidate in glob.glob("/usr/lib/postgresql/*/bin"):
        path = Path(candidate)
        major = path.parent.name
        if all((path / tool).is_file() for tool in _TOOLS) and major.split(".")[0].isdigit():
            found.append((int(major.split(".")[0]), path))
    return max(found)[1] if found else None


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt_get = shutil.which("apt-get") or "/usr/bin/apt-get"
    return subprocess.run([apt_get, *args], capture_output=True, text=True, env=env,
                          timeout=INSTALL_TIMEOUT, check=False)


def install_postgres() -> Path:
    """Install Debian's ``postgresql`` package (root only); its bin directory."""
    if os.geteuid() != 0:
        raise PostgresUnavailable(
            "PostgreSQL server binaries are not under /usr/lib/postgresql/*/bin and installing "
            "them needs root (apt-get install postgresql)")
    if shutil.which("apt-get") is None:
        raise PostgresUnavailable("no PostgreSQL server binaries and no apt-get to install them")
    package = ["install", "-y", "--no-install-recommends", "postgresql"]
    try:
        done = _apt_get(*package)
        if done.returncode != 0:
            _apt_get("update")
            done = _apt_get(*package)
    except subprocess.TimeoutExpired as exc:
        raise PostgresUnavailable(f"apt-get took longer than {INSTALL_TIMEOUT} s") from exc
    bindir = find_bindir()
    if done.returncode != 0 or bindir is None:
        raise PostgresUnavailable(
            f"apt-get install postgresql failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return bindir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """A running throwaway cluster: where it lives, how to reach it, how to stop it."""

    bindir: Path
    root: Path
    port: int
    as_user: str | None  # run server commands as this user (when we are root)
    superuser: str
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` over TCP on the loopback address."""
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """The libpq connection string of ``database``."""
        return (f"host=127.0.0.1 port={self.port} user={self.superuser} dbname={database} "
                "connect_timeout=10")

    def run(self, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a server tool (as the server's user when we are root)."""
        command = [str(self.bindir / tool), *args]
        if self.as_user is not None:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            command = [runuser, "-u", self.as_user, "--", *command]
        # The server's user may not be able to enter our working directory.
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, check=False)

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; its name."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing whatever connections a test left open."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (fast shutdown), killing the postmaster if it will not stop."""
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            done = self.run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w",
                            "-t", str(STOP_TIMEOUT), timeout=STOP_TIMEOUT + 10)
            stopped = done.returncode == 0
        except subprocess.TimeoutExpired:
            stopped = False
        if not stopped:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((self.data / "postmaster.pid").read_text().split("\n")[0])
                os.kill(pid, signal.SIGKILL)  # the postmaster this session started


def _server_user() -> str | None:
    """Who runs the server: the postgres user when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError as exc:
        raise PostgresUnavailable(
            f"running as root and there is no {SERVER_USER!r} user to run the server as "
            "(Debian's postgresql package creates it)") from exc
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root and there is no runuser to drop privileges")
    return SERVER_USER


def start_server() -> PostgresServer:
    """initdb and start a cluster in a new temporary directory; PostgresUnavailable if not."""
    bindir = find_bindir() or install_postgres()
    as_user = _server_user()
    superuser = as_user or pwd.getpwuid(os.geteuid()).pw_name
    root = Path(tempfile.mkdtemp(prefix="broker-pg-"))
    if as_user is not None:
        entry = pwd.getpwnam(as_user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(bindir, root, 0, as_user, superuser)
    try:
        _initdb(server)
        _start(server)
    except BaseException:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def _initdb(server: PostgresServer) -> None:
    try:
        done = server.run("initdb", "-D", str(server.data), "-U", server.superuser,
                          "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
                          timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise PostgresUnavailable(f"initdb took longer than {START_TIMEOUT} s") from exc
    if done.returncode != 0:
        raise PostgresUnavailable(f"initdb failed (exit {done.returncode}):\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    if server.as_user is not None:
        entry = pwd.getpwnam(server.as_user)
        server.socket_dir.mkdir()
        os.chown(server.socket_dir, entry.pw_uid, entry.pw_gid)
    else:
        server.socket_dir.mkdir()


def _start(server: PostgresServer) -> None:
    """Start on a free port; a port taken in the meantime is retried with another."""
    for _attempt in range(3):
        server.port = _free_port()
        options = " ".join([
            f"-p {server.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories='{server.socket_dir}'",
            "-c max_connections=100",
            "-c fsync=off",  # a test server: the client, never the server, is killed
            "-c full_page_writes=off",
            "-c shared_buffers=32MB",
            "-c log_min_messages=warning",
        ])
        try:
            done = server.run("pg_ctl", "start", "-D", str(server.data), "-l", str(server.log),
                              "-w", "-t", str(START_TIMEOUT), "-o", options,
                              timeout=START_TIMEOUT + 10)
        except subprocess.TimeoutExpired as exc:
            raise PostgresUnavailable(
                f"pg_ctl start took longer than {START_TIMEOUT} s; server log:\n"
                f"{_tail(server.log)}") from exc
        if done.returncode == 0 and _ready(server):
            return
        log = _tail(server.log)
        server.stop()
        if "Address already in use" not in log and "could not bind" not in log:
            raise PostgresUnavailable(
                f"pg_ctl start failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                f"server log ({server.log}):\n{log}")
    raise PostgresUnavailable(f"no free port after 3 attempts; server log:\n{_tail(server.log)}")


def _ready(server: PostgresServer, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(server.conninfo()) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def _unavailable(reason: str) -> NoReturn:
    message = f"PostgreSQL tests need a server: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test session, on 127.0.0.1, stopped and removed at the end."""
    try:
        server = start_server()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database of its own (dropped after the test)."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        try:
            postgres_server.drop_database(name)
        except psycopg.Error as exc:  # a test that broke the server already reports it
            print(f"could not drop {name}: {exc}\n{_tail(postgres_server.log)}")  # noqa: T201


#: The ``params`` of a fixture that runs its tests on each kind of database.
DATABASES = ["sqlite", "postgresql"]


def empty_database(request: pytest.FixtureRequest, sqlite_file: Path) -> str:
    """The URL of an empty database of the kind ``request.param`` (one of DATABASES) names: a
    SQLite file at ``sqlite_file``, or a new PostgreSQL database from ``postgres_url``."""
    if request.param == "sqlite":
        return f"sqlite:///{sqlite_file}"
    return str(request.getfixturevalue("postgres_url"))
