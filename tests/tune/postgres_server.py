"""A throw-away PostgreSQL server for tests: its own data folder, 127.0.0.1 only, a free port.

As root the server runs as the `postgres` system user (PostgreSQL refuses to run as root), which
Debian's `postgresql` package creates. The server is stopped with `pg_ctl stop`, which signals
the process id recorded in its own data folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SETUP_HINT = "run `bash scripts/setup.sh --dev`, which installs Debian's postgresql package"
SERVER_USER = "postgres"
PASSWORD = "tune-test-secret"


def find_server_programs() -> Path | None:
    """Return the folder that contains initdb and pg_ctl, or None when PostgreSQL is missing.

    Debian installs them in /usr/lib/postgresql/VERSION/bin, outside PATH.
    """
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = []
    for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb"):
        try:
            versions.append((int(initdb.parent.parent.name), initdb.parent))
        except ValueError:
            continue
    return max(versions)[1] if versions else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """A running test server; `stop` ends it and removes its folder."""

    programs: Path
    folder: Path
    port: int
    as_root: bool

    @classmethod
    def start(cls) -> PostgresServer:
        """Create a cluster in a new temporary folder and start a server on it.

        Raises:
            AssertionError (through pytest.fail): the server programs or the driver are missing.
        """
        import pytest

        programs = find_server_programs()
        if programs is None:
            pytest.fail(f"PostgreSQL server programs (initdb, pg_ctl) not found; {SETUP_HINT}")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.fail(f"the PostgreSQL driver psycopg is not installed; {SETUP_HINT}")
        as_root = os.geteuid() == 0
        folder = Path(tempfile.mkdtemp(prefix="pocketnas-postgres-"))
        if as_root:
            shutil.chown(folder, SERVER_USER, SERVER_USER)
        server = cls(programs=programs, folder=folder, port=_free_port(), as_root=as_root)
        try:
            server._init_and_start()
        except BaseException:
            server.stop()
            raise
        return server

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.programs / program), *args]
        if self.as_root:
            return ["runuser", "-u", SERVER_USER, "--", *command]
        return command

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            self._command(program, *args),
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed with status {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}\n{self._server_log()}"
            )

    def _server_log(self) -> str:
        log = self.folder / "server.log"
        return log.read_text(errors="replace")[-4000:] if log.is_file() else ""

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _init_and_start(self) -> None:
        password_file = self.folder / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.as_root:
            shutil.chown(password_file, SERVER_USER, SERVER_USER)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            "--encoding=UTF8",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.folder} -c fsync=off"
        )
        log = self.folder / "server.log"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start")

    def url(self, database: str) -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a database and return its URL."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=PASSWORD,
            dbname="postgres",
            autocommit=True,
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (if it runs) and remove its folder."""
        if (self.data / "postmaster.pid").is_file():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
