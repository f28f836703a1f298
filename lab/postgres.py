"""A throwaway PostgreSQL cluster for tests and benches: initdb into a temp dir, pg_ctl on a loopback port,
stopped at the end. Uses the distribution's PostgreSQL (scripts/setup.sh installs it for `make test`)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from lab import free_port


def pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class ThrowawayPostgres:
    """initdb + pg_ctl as the distribution's `postgres` user (the server refuses to run as root)."""

    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql-15)")
        self.bin = bindir
        self.base = Path(tempfile.mkdtemp(prefix="gpuguard-pg-", dir="/tmp"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        user = pwd.getpwnam("postgres")
        os.chown(self.base, user.pw_uid, user.pw_gid)
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "gpuguard", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=200", "start")
        self.url = f"postgresql://gpuguard@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        out = subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / tool), *args], capture_output=True,
                             text=True, timeout=120, cwd=self.base, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed: {out.stderr[-2000:]}")

    def new_database(self) -> str:
        """A fresh, empty database on this cluster; its URL."""
        import psycopg  # noqa: PLC0415

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
