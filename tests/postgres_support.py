"""A real PostgreSQL server for the cluster-database tests: Debian's `postgresql` package
(its server binaries under /usr/lib/postgresql/<version>/bin), started by the tests on
127.0.0.1 in a temporary data directory, fsync off, trust authentication on 127.0.0.1
only. PostgreSQL refuses to run as root: as root the server runs as the package's
`postgres` user, its directory that user's.

`start()` raises Unavailable, with the reason, where it cannot start: the fixture turns
that into a skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from reliability_support import free_port

SERVER_USER = "postgres"  # Debian's package creates it


class Unavailable(RuntimeError):
    pass


def server_bin() -> Path | None:
    """The newest installed server's bin directory (initdb, pg_ctl, createdb)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=_version, reverse=True)
    return found[0].parent if found else None


def _version(initdb: Path) -> float:
    try:
        return float(initdb.parent.parent.name)
    except ValueError:
        return 0.0


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        # Not under pytest's temporary root: as root that is a 0700 directory the server's
        # user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="latent-postgres-"))
        self.data = self.root / "data"
        self.bin = server_bin()
        self.as_root = os.geteuid() == 0

    def url(self, database: str) -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise Unavailable(f"{args[0]} failed: {(done.stderr or done.stdout).strip()[-800:]}")

    def start(self) -> None:
        if self.bin is None:
            raise Unavailable(
                "no PostgreSQL server under /usr/lib/postgresql: apt-get install postgresql"
            )
        if self.as_root:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise Unavailable(f"running as root and there is no {SERVER_USER!r} user") from None
            if shutil.which("runuser") is None:
                raise Unavailable("running as root and there is no runuser to drop to postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SERVER_USER, "-A", "trust", "--no-sync")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")  # fmt: skip

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SERVER_USER, name)
        return self.url(name)

    def log_tail(self) -> str:
        try:
            return (self.root / "server.log").read_text()[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(Unavailable, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
