"""A throwaway PostgreSQL server for the test suite.

The server runs from the distribution's binaries (``pg_config --bindir``) in a fresh
directory made with `tempfile.mkdtemp` (not under pytest's ``tmp_path``: pytest makes its
base folders mode 0700, which the ``postgres`` user cannot enter). When the suite runs as
root the server runs as ``postgres`` through ``runuser``, because PostgreSQL refuses to
run as root. It listens on a unix socket only, with fsync off: the faults tested here are
process kills, not power loss. Commits stay synchronous, so a commit the server
acknowledged survives an immediate stop (the WAL is in the OS's cache).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

REQUIRE_ENV = "DASHPERSIST_REQUIRE_POSTGRES"


def find_bindir() -> Path | None:
    """Return the folder holding initdb and pg_ctl, or None."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    """A running throwaway server; `stop` and `start` simulate an outage."""

    bindir: Path
    root: Path
    run_as: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)

    def init(self) -> None:
        self.socket_dir.mkdir()
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.root.chmod(0o755)
        self._run(
            "initdb",
            "--no-sync",
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "-D",
            str(self.data_dir),
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses='' -k {self.socket_dir} -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host=str(self.socket_dir), user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name is ours: hex only
        return self.admin_url(name)

    def is_running(self) -> bool:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "status"]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0

    def destroy(self) -> None:
        if self.is_running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer | str:
    """Start a server, or return the reason none can be started."""
    bindir = find_bindir()
    if bindir is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) found; install 'postgresql'"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        run_as = "postgres"
    server = PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="dashpersist-pg-")), run_as)
    try:
        server.init()
        server.start()
    except subprocess.CalledProcessError as exc:
        server.destroy()
        return f"PostgreSQL failed to start: {exc.stderr or exc.stdout}"
    return server
