"""A throwaway PostgreSQL server in a temporary folder, on loopback (tests and benchmarks).

It uses the real server binaries (Debian's ``postgresql-15``: ``initdb`` and ``pg_ctl`` in
``/usr/lib/postgresql/<version>/bin``, or whatever ``$DELIB_PG_BIN`` or ``PATH`` gives). The
server refuses to run as root, so as root it runs as the ``postgres`` user. Nothing listens
beyond 127.0.0.1 and the only role trusts local connections, so nothing here needs a password.
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

BIN_ENV = "DELIB_PG_BIN"


def find_bin() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl``, or None."""
    chosen = os.environ.get(BIN_ENV)
    candidates = [chosen] if chosen else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TempPostgres:
    """``with TempPostgres() as pg: pg.dsn`` — started on enter, stopped and removed on exit."""

    def __init__(self, bin_dir: Path | None = None, max_connections: int = 200) -> None:
        found = bin_dir or find_bin()
        if found is None:
            raise RuntimeError(
                "PostgreSQL's server binaries were not found; install Debian's postgresql-15 "
                f"(or set {BIN_ENV} to the folder holding initdb and pg_ctl)"
            )
        self.bin = found
        self.max_connections = max_connections
        self.root = Path(tempfile.mkdtemp(prefix="delib-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.dsn = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip() or result.stdout}")

    def start(self) -> TempPostgres:
        if os.geteuid() == 0:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8")
        self._start()
        return self

    def _start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            f"-c max_connections={self.max_connections} -c fsync=on"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def pause(self) -> None:
        """Stop the server, keeping its data (``unpause`` starts it again on the same port)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def unpause(self) -> None:
        self._start()

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
