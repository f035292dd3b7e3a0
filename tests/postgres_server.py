"""A throwaway PostgreSQL server for the tests: initdb into a temp dir, start, stop, delete.

The store's tests run on SQLite and on a real PostgreSQL started here, so nothing depends on a
server that happens to be running. The server listens on a free port of 127.0.0.1 with a
password (as a user's server would) and on a unix socket in its own temp dir for the admin
connection. It runs with fsync off: it is deleted at the end, so only its speed matters.
PostgreSQL refuses to run as root; as root the server runs as the `postgres` system user.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

SERVER_GLOB = "/usr/lib/postgresql/*/bin"
"""Where Debian and Ubuntu put the server binaries (not on PATH)."""
USER = "safeturn"
_SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


def find_bin_dir() -> Path | None:
    """The folder with `initdb` and `pg_ctl`: on PATH first, else the newest Debian version."""
    on_path = shutil.which("pg_ctl")
    if on_path is not None and shutil.which("initdb") is not None:
        return Path(on_path).resolve().parent
    found = [Path(d) for d in glob.glob(SERVER_GLOB) if _has_server(Path(d))]
    return max(found, key=_version, default=None)


def _has_server(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def _version(folder: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", folder.parent.name))


class PostgresServer:
    """One running server; `create_database` gives each test its own empty database."""

    def __init__(self, bin_dir: Path, root: Path, port: int, password: str) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.port = port
        self.password = password
        self._names = itertools.count(1)
        self.start_s = 0.0
        """Seconds from `initdb` to a server that takes connections."""

    @classmethod
    @contextlib.contextmanager
    def started(cls, bin_dir: Path) -> Iterator[PostgresServer]:
        """Start a server in a new temp dir; stop it and delete the dir on exit."""
        root = Path(tempfile.mkdtemp(prefix="safeturn-pg-"))
        server = cls(bin_dir, root, 0, secrets.token_hex(8))
        begun = time.perf_counter()
        try:
            server._init()
            server._start()
            server.start_s = time.perf_counter() - begun
            yield server
        finally:
            with contextlib.suppress(ServerUnavailable, OSError, subprocess.SubprocessError):
                server._pg_ctl("stop", "-m", "immediate")
            shutil.rmtree(root, ignore_errors=True)

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database`, with the password, as a user would give it."""
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"test_{next(self._names)}"
        with self._admin() as connection:
            connection.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def drop_database(self, name: str) -> None:
        """Drop a test's database, ending connections it left open."""
        with self._admin() as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        import psycopg  # only where PostgreSQL runs: the SQLite tests need no driver

        return psycopg.connect(
            host=str(self.root), port=self.port, user=USER, dbname="postgres", autocommit=True
        )

    def _init(self) -> None:
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerUnavailable(
                    "running as root, and there is no 'postgres' user to run the server as"
                ) from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        self._run(
            "initdb",
            *("-D", str(self.root / "data"), "-U", USER, "-E", "UTF8", "--locale=C"),
            *("--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"),
            *("--no-sync", "--no-instructions"),
        )
        pwfile.unlink()

    def _start(self, attempts: int = 3) -> None:
        """Start on a free port; another process may take the port first, so try again."""
        for attempt in range(attempts):
            self.port = _free_port()
            options = f"-p {self.port} -h 127.0.0.1 -k {self.root} {_SETTINGS}"
            try:
                self._pg_ctl("start", "-w", "-t", "30", "-l", str(self.root / "log"), "-o", options)
                return
            except ServerUnavailable:
                if attempt == attempts - 1:
                    log = self.root / "log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise ServerUnavailable(f"PostgreSQL did not start:\n{tail}") from None
                time.sleep(0.2)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), *args)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=self.root)
        if done.returncode != 0:
            raise ServerUnavailable(f"{program} {args[:3]} failed: {done.stderr.strip()[-2000:]}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
