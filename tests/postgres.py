"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder.

The server runs as the unprivileged ``postgres`` user when the tests run as root (PostgreSQL
refuses to run as root), listens on a free port of 127.0.0.1 with password authentication
(scram-sha-256) and keeps its socket in the temporary folder. Missing binaries are an error
that says how to install them, never a silent skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import HANG_GUARD

INSTALL_HINT = (
    "the PostgreSQL tests need the server binaries (initdb, pg_ctl): install Debian's "
    "postgresql package (apt-get install postgresql; `make test` does it)"
)


def server_bin() -> Path:
    """The folder holding initdb and pg_ctl (the newest Debian version, else PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise RuntimeError(INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """Start with :meth:`start`, stop with :meth:`stop` (``pg_ctl stop -m immediate``)."""

    user = "postgres"

    def __init__(self) -> None:
        self.bin = server_bin()
        self.password = secrets.token_hex(12)
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="pacnet-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.as_postgres = os.geteuid() == 0
        self._databases = 0

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        command = [str(a) for a in argv]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD)

    def start(self) -> None:
        self.socket_dir.mkdir()
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_postgres:
            entry = pwd.getpwnam("postgres")
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        init = self._run(
            self.bin / "initdb",
            "-D",
            self.data,
            "-U",
            self.user,
            "--pwfile",
            pwfile,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[-2000:]}")
        for _ in range(5):  # a free port may be taken before the server binds it
            self.port = free_port()
            options = (
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c shared_buffers=16MB -c max_connections=60"
            )
            started = self._run(
                self.bin / "pg_ctl",
                "-D",
                self.data,
                "-l",
                self.root / "server.log",
                "-o",
                options,
                "-w",
                "-t",
                "600",  # seconds to wait for the server: a hang guard
                "start",
            )
            if started.returncode == 0:
                return
            time.sleep(0.5)
        log = (self.root / "server.log").read_text()[-2000:]
        raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()} {log}")

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        """A TCP URL as pacnet takes it (password authentication)."""
        pw = self.password if password is None else password
        return f"postgresql://{self.user}:{pw}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        self._databases += 1
        name = f"t{self._databases}_{secrets.token_hex(3)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database that :meth:`create_database` made (its clients disconnected)."""
        self._admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def stop(self) -> None:
        if self.data.exists():
            self._run(self.bin / "pg_ctl", "-D", self.data, "stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)
