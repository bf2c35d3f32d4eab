"""A real, throwaway PostgreSQL server for tests: initdb in a temp dir, pg_ctl on a free loopback port.

Use it from a test module with `pytest_plugins = ["tests.postgres_fixture"]`, then ask for
`postgres_url` (a fresh database per test) or `postgres_server` (one server per session).
As root the server runs as the `postgres` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import free_port

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian's layout)."""
    versions = sorted(PG_ROOT.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        pytest.fail(f"PostgreSQL is not installed under {PG_ROOT}: run `bash scripts/system-deps.sh`")
    return versions[-1].parent


@dataclass
class PostgresServer:
    """A running server: superuser `postgres`, trust auth, loopback only."""

    port: int
    root: Path
    bin: Path

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL (psycopg 3) of one of its databases."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """The libpq connection string of one of its databases."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            # FILE_COPY (PostgreSQL 15+) copies the tiny template faster than WAL-logging it.
            strategy = " STRATEGY FILE_COPY" if int(self.bin.parent.name) >= 15 else ""
            conn.execute(sql.SQL("CREATE DATABASE {}" + strategy).format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _as_server_user(argv: list[str]) -> list[str]:
    """PostgreSQL will not run as root: run its tools as `postgres` when we are root."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", SUPERUSER, "--", *argv]


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Create a cluster in a fresh temp dir, start it, yield it; stop it and delete everything."""
    bin_dir = pg_bin()
    root = Path(tempfile.mkdtemp(prefix="medkit-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(SUPERUSER)
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(port=free_port(), root=root, bin=bin_dir)
    data, log = root / "data", root / "server.log"
    try:
        subprocess.run(_as_server_user([
            str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        ]), check=True, capture_output=True)
        options = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run(_as_server_user([
            str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
            "start",
        ]), check=True, capture_output=True)
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_server_user([
                str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop",
            ]), check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session."""
    with running_postgres() as server:
        yield server


_DATABASE_NUMBERS = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = f"medkit_test_{os.getpid()}_{next(_DATABASE_NUMBERS)}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'medkit.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
