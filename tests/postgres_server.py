"""A throwaway PostgreSQL server in a temporary folder (initdb + pg_ctl), for tests and benchmarks.

It listens on 127.0.0.1 only, on a free port, with password authentication (scram-sha-256),
so that tests exercise credentials the way a real deployment does. initdb refuses to run as
root: as root, the server runs as the ``postgres`` (else ``nobody``) user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True) + ["/usr/local/pgsql/bin"]


def find_bin_dir() -> Path | None:
    """Folder holding initdb, pg_ctl and postgres: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl") and shutil.which("postgres"):
        return Path(os.path.realpath(found)).parent
    for d in BIN_DIRS:
        if all((Path(d) / b).exists() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> dict:
    """subprocess arguments that drop root (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return {"user": pw.pw_uid, "group": pw.pw_gid}
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists for PostgreSQL")


class PostgresServer:
    """A PostgreSQL server with one database and a password user, started by :meth:`start`."""

    def __init__(self, user: str = "hwnas", password: str = "pg-Secret-7431", database: str = "hwnas",
                 durable: bool = False):
        self.bin = find_bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl, postgres) not found on PATH or in "
                               + ", ".join(BIN_DIRS))
        self.user, self.password, self.database, self.durable = user, password, database, durable
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="hwnas-pg-"))  # not under pytest's tmp: that is private to root
        self.data = self.root / "data"
        self.as_user = _run_as()

    @property
    def url(self) -> str:
        """SQLAlchemy URL without the password (give it through the environment)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def url_with_password(self) -> str:
        """SQLAlchemy URL with the password in it."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _call(self, *args: str) -> None:
        done = subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True, timeout=120,
                              **self.as_user)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> "PostgresServer":
        """initdb, start the server, create the database; returns self."""
        if self.as_user:
            os.chown(self.root, self.as_user["user"], self.as_user["group"])
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            os.chown(pwfile, self.as_user["user"], self.as_user["group"])
        self._call("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                   "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        # Tests do not need crash safety; a benchmark of real throughput keeps fsync on (durable=True).
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='{self.root}'"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._call("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "60", "start")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._call("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
