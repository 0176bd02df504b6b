"""Shared fixtures: an isolated working directory and a scripted OpenAI server on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from delib.testing import FakeOpenAIServer

ENV_TO_CLEAR = (
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "DELIB_TRANSCRIPTS",
    "DELIB_DEBUG",
    "XDG_CONFIG_HOME",
)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own empty folder with its own config dir and no OpenAI env."""
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("DELIB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the real entry point in-process; return exit code, stdout, stderr."""
    from delib.cli import main

    old_argv = sys.argv
    sys.argv = ["delib", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture):
    return lambda *args: run_cli(list(args), capsys)


def _interruptible() -> None:  # runs in the child between fork and exec
    # A suite started in the background by a non-interactive shell inherits Ctrl-C ignored
    # (POSIX does that to asynchronous lists), and so would every delib it starts; the tests
    # that send SIGINT are about what delib does with it, as it is in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def delib_process(
    *args: str, cwd: Path | None = None, stdin: int | None = None
) -> subprocess.Popen:
    """Start delib as a real child process, importing this checkout (``stdin``: for example
    ``subprocess.PIPE``, to type a human seat's replies)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "delib", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        preexec_fn=_interruptible,
    )


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the session, in a temporary folder on loopback. Without the
    server binaries or psycopg the tests that need it skip, unless DELIB_REQUIRE_POSTGRES=1
    (CI), which makes them fail."""
    from delib.testing.pgtemp import find_bin

    missing = None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing = "psycopg is not installed (pip install '.[cluster]')"
    if missing is None and find_bin() is None:
        missing = "PostgreSQL's server binaries are not installed (Debian: postgresql-15)"
    if missing:
        if os.environ.get("DELIB_REQUIRE_POSTGRES") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    from delib.testing.pgtemp import TempPostgres

    with TempPostgres() as pg:
        yield pg


@pytest.fixture
def pg(pg_server) -> str:
    """The address of a new, empty database on the session's server."""
    import secrets

    import psycopg

    name = f"delib_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.dsn.rsplit("/", 1)[0] + "/" + name
