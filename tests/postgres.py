"""A private PostgreSQL server on loopback for the tests' Airflow metadata database, as compose and the cluster run
Airflow on PostgreSQL: Debian's server binaries (``make postgresql``), a fresh cluster in a temporary folder,
password authentication, no Unix socket; stopped and deleted at the end."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2

#: Where Debian's ``postgresql`` package puts each major version's server binaries.
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
#: The account Debian's package creates: the server refuses to run as root, so a root test process runs it as this.
SERVICE_USER = "postgres"


def binaries() -> Path:
    """The newest installed major version's ``bin/`` folder."""
    versions = sorted(
        (p for p in DEBIAN_BINARIES.glob("*/bin") if (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise RuntimeError(
            f"PostgreSQL's server is not installed (no {DEBIAN_BINARIES}/*/bin/pg_ctl): `make postgresql` "
            "installs Debian's package"
        )
    return versions[-1]


class PostgresServer:
    """``initdb`` a cluster, ``pg_ctl start`` it on ``port`` and create ``database`` owned by ``user``."""

    def __init__(self, port: int, database: str = "airflow", user: str = "airflow") -> None:
        self.port, self.database, self.user = port, database, user
        self.password = secrets.token_urlsafe(18)
        self.bin = binaries()
        # Not under pytest's temporary root: its folders are the test user's alone, and the server may run as
        # another user.
        self.root = Path(tempfile.mkdtemp(prefix="airflow-postgres-"))
        self.data = self.root / "data"
        self._as_service_user = os.geteuid() == 0

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Airflow connects with (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``)."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            host="127.0.0.1", port=self.port, dbname=self.database, user=self.user, password=self.password
        )

    def _run(self, *args: str) -> None:
        command = [*(["runuser", "-u", SERVICE_USER, "--"] if self._as_service_user else []), *args]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> PostgresServer:
        password_file = self.root / "password"
        password_file.write_text(self.password)
        if self._as_service_user:
            shutil.chown(self.root, SERVICE_USER)
            shutil.chown(password_file, SERVICE_USER)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=scram-sha-256",
                  f"--pwfile={password_file}", "--encoding=UTF8", "--no-instructions")  # fmt: skip
        password_file.unlink()
        # No socket file, loopback only; no fsync: a throwaway database, deleted at the end.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "start", "-w", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options)  # fmt: skip
        admin = psycopg2.connect(
            host="127.0.0.1", port=self.port, dbname="postgres", user=self.user, password=self.password
        )
        try:
            admin.autocommit = True  # CREATE DATABASE runs outside a transaction
            with admin.cursor() as cursor:
                cursor.execute(f'create database "{self.database}"')
        finally:
            admin.close()
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data))
        shutil.rmtree(self.root, ignore_errors=True)
