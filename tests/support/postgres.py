"""A private PostgreSQL cluster on loopback (Debian's server binaries), for publisher tests.

initdb + pg_ctl in a temporary directory on a free port; trust authentication on 127.0.0.1
only. PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` system
user (runuser). `new_database()` gives each test its own empty database (CREATE DATABASE is
cheap), so one cluster serves a whole session.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.procs import free_port
from tests.support.wait import wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"


def available() -> bool:
    return (PG_BIN / "initdb").is_file() and (PG_BIN / "pg_ctl").is_file()


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


class PostgresCluster:
    """One running cluster; `url(db)` is a psycopg/publisher.yaml connection URL."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port(v6=False, udp=False)
        self._names = itertools.count(1)

    def start(self) -> PostgresCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                   "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "-N"])
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.directory} -c fsync=off "
                "-c max_connections=100 -c shared_buffers=16MB")
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                   str(self.directory / "server.log"), "-o", opts, "-w", "-t", "60", "start"])
        wait_for(self._ready, timeout=30, what="postgres accepting connections")
        return self

    def _run(self, argv: list[str]) -> None:
        r = subprocess.run(_as_owner(argv), capture_output=True, text=True, timeout=120,
                           check=False, cwd=self.directory)
        if r.returncode != 0:
            log = self.directory / "server.log"
            raise RuntimeError(f"{argv[0]} failed: {r.stdout}{r.stderr}"
                               f"{log.read_text() if log.exists() else ''}")

    def _ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self, stem: str = "publisher") -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = f"{stem}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m",
                                      "immediate", "stop"]),
                           capture_output=True, timeout=60, check=False)


@contextmanager
def postgres_cluster(directory: Path) -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(directory).start()
    try:
        yield cluster
    finally:
        cluster.stop()
