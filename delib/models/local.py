"""The embedded model: llama.cpp's OpenAI-compatible server as a child process on loopback.

delib runs ``python -m llama_cpp.server`` (from the optional ``local`` extra) for a GGUF file:
a small model shipped in a PyPI package (``delib.models.local_models``; ``--local-model
NAME``), or any file given with ``--gguf``. The server listens on a
free port of 127.0.0.1 only, and is stopped when the run ends, fails or is interrupted. Should
delib itself be killed outright, the kernel stops the child too (``PR_SET_PDEATHSIG``), so no
server is ever left behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from delib.models.config import EMBEDDED_ENDPOINT, PLACEHOLDER_API_KEY, Endpoint, EndpointConfig
from delib.models.local_models import (
    LocalServerError,
    ModelFile,
    _require_extra,
)
from delib.models.retries import poll

HOST = "127.0.0.1"
# Context the server is started with. The bundled model was trained for 32k tokens, but a
# 4-5 speaker debate of a few rounds fits in 8k and the KV cache stays small (about 150 MB).
DEFAULT_CTX = 8192
# Loading a few hundred MB from disk takes seconds; a bigger --gguf on a slow disk may take more.
READY_TIMEOUT = 120.0
# A small local model writes 15-20 tokens a second on two cores: shorter turns keep a debate
# to minutes. Flags, persona and scenario files still override it.
EMBEDDED_MAX_TOKENS = 160
# Its verdict: a summary, a few short lists and one line per participant, written under a
# JSON-schema grammar, which ends it when the object closes.
EMBEDDED_VERDICT_TOKENS = 400
# Seconds a stopped server gets to exit before it is killed.
STOP_GRACE = 5.0
# Attempts to bind, each on a fresh free port, before giving up.
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 12
_PR_SET_PDEATHSIG = 1


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


class _PortTaken(Exception):
    """The server could not bind its port: someone took it between our check and its start."""


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
            # llama-cpp-python takes a schema in response_format (grammar-constrained).
            structured_output="json_object",
            # Small models continue whatever scaffolding ends their prompt: the compact layout
            # gives them two sentences of persona, the question, the latest turns unlabelled
            # and a cue of a few words. SmolLM2 on four held-out scenarios (bench.bakeoff):
            # 0% of turns echo delib's instructions or a speaker label, against 50% with
            # persona_first. --prompt-layout persona_first or shared_first bring the others back.
            prompt_layout="compact",
            max_tokens=EMBEDDED_MAX_TOKENS,
            verdict_tokens=EMBEDDED_VERDICT_TOKENS,
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
        ports = [port] if port else []  # 0: any free port

        async def launch() -> bool:
            self._spawn(ports.pop() if ports else free_port())
            if await self._wait_ready():
                return True
            if self._lost_port_race():  # another program took the port: another port
                self.notes.append(f"port {self.port} was taken meanwhile; trying another")
                raise _PortTaken
            return False

        retry = retry_if_exception_type(_PortTaken)
        with contextlib.suppress(_PortTaken):
            if await AsyncRetrying(
                retry=retry, stop=stop_after_attempt(PORT_ATTEMPTS), reraise=True
            )(launch):
                return
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
        """Whether the server answers within ``ready_timeout`` (polled; a server that dies
        meanwhile ends the wait at once)."""
        url = f"{self.base_url}/models"

        async def settled() -> bool:
            return not self.alive() or await asyncio.to_thread(_answers, url)

        # True once it answered or died (a dead process stays dead), False at the deadline.
        settled_in_time = await AsyncRetrying(**poll(0.1, 0.4, deadline=self.ready_timeout))(
            settled
        )
        return bool(settled_in_time) and self.alive()

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
