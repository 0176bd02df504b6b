"""A scripted OpenAI-compatible chat server on loopback, for tests and benchmarks.

It speaks enough of the OpenAI API for delib and the real ``openai`` client: ``GET /v1/models``
and ``POST /v1/chat/completions``, streaming (server-sent events) and not. Replies come from a
queue (``enqueue``) or a responder function; faults can be injected per request; every request
is recorded in ``history``.

    with FakeOpenAIServer() as server:
        server.enqueue("first reply", "second reply")
        server.fail(Fault(status=429, retry_after=0))
        ... point delib at server.base_url ...

Run one by hand: ``python -m delib.testing --port 8089``. In another process, the chat
requests it received are at ``GET /_fake/requests`` (``?clear`` forgets them).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from delib.testing.fake_api import Answer, Shaped, answer
from delib.testing.responders import debate_responder

Responder = Callable[[dict], str]

__all__ = [
    "Answer",
    "Fault",
    "FakeOpenAIServer",
    "FakeTransport",
    "Shaped",
    "answer",
    "debate_responder",
]


@dataclass
class Fault:
    """An error answer for one chat request (the next one that arrives).

    By default a JSON error with ``status`` and ``message``. A hostile server instead: ``body``
    is sent as is (with ``content_type``), or ``events`` are streamed as is, one write each,
    ``chunk_delay`` apart (malformed, truncated or garbage server-sent events).
    """

    status: int = 500
    message: str = "injected fault"
    retry_after: float | None = None
    body: bytes | None = None
    content_type: str = "application/json"
    events: list[bytes] | None = None
    chunk_delay: float = 0.0


@dataclass
class FakeOpenAIServer:
    """The server; start it with ``start()`` or a ``with`` block."""

    models: tuple[str, ...] = ("test-model",)
    responder: Responder = debate_responder
    usage: bool = True  # report token usage
    delay: float = 0.0  # seconds before the first byte of every chat reply
    chunk_delay: float = 0.0  # seconds between streamed chunks
    chunk_chars: int = 12  # characters per streamed chunk
    reject_system: bool = False  # 400 like templates without a system role
    drop_system: bool = False  # ignore system messages without a word (llama-cpp-python gemma)
    strict_alternation: bool = False  # 400 unless user/assistant strictly alternate
    reject_stream_options: bool = False  # 400 if stream_options is sent
    require_api_key: str | None = None  # 401 unless this bearer token is sent
    models_body: bytes | None = None  # sent as is for GET /v1/models (a hostile listing)
    structured: str | None = None  # None ignores response_format; "none" rejects it; a dialect
    structured_invalid: bool = False  # accept response_format, then ignore it
    structured_status: int = 400  # status of a rejected dialect (llama-cpp-python's server: 500)
    host: str = "127.0.0.1"
    port: int = 0
    history: list[dict] = field(default_factory=list)
    in_flight: int = 0  # chat requests being answered now
    most_in_flight: int = 0  # the most there ever were at once
    _replies: deque = field(default_factory=deque)
    _faults: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # --- scripting -------------------------------------------------------------------------
    def enqueue(self, *replies: str | Shaped) -> None:
        """Replies for the next chat requests, in order, before the responder is used."""
        with self._lock:
            self._replies.extend(replies)

    def fail(self, *faults: Fault, after: int = 0) -> None:
        """Faults for the next chat requests, in order, once ``after`` requests have passed."""
        with self._lock:
            self._faults.extend([None] * after)
            self._faults.extend(faults)

    def chat_requests(self) -> list[dict]:
        return [h for h in self.history if h["path"].endswith("/chat/completions")]

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://{self.host}:{self._server.server_address[1]}/v1"

    def start(self) -> FakeOpenAIServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _QuietServer((self.host, self.port), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- answering ---------------------------------------------------------------------------
    def _next(self) -> tuple[Fault | None, str | None]:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            reply = None if fault or not self._replies else self._replies.popleft()
        return fault, reply

    def _template_error(self, messages: list[dict]) -> str | None:
        roles = [m.get("role") for m in messages]
        if self.reject_system and "system" in roles:
            return "System role not supported"
        if self.strict_alternation:
            body = [r for r in roles if r != "system"]
            if roles.count("system") > (1 if roles and roles[0] == "system" else 0):
                return "Conversation roles must alternate user/assistant/user/assistant/..."
            for i, role in enumerate(body):
                if role != ("user" if i % 2 == 0 else "assistant"):
                    return "Conversation roles must alternate user/assistant/user/assistant/..."
        return None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many speakers connecting at once (socketserver's default is 5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or go away mid-reply are part of the tests, not errors.
        pass


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _reply(self, method: str, raw: bytes = b"", answered=lambda: None) -> None:
        """Answer one request; ``answered`` is called before the reply's last write, so a
        client that has the whole reply finds the request no longer counted in flight."""
        result = answer(self.fake, method, self.path, dict(self.headers.items()), raw)
        if result.delay:
            time.sleep(result.delay)
        self.send_response(result.status)
        self.send_header("Content-Type", result.content_type())
        data = result.payload() if result.events is None else b""
        if result.events is None:
            self.send_header("Content-Length", str(len(data)))
        for key, value in result.headers.items():
            self.send_header(key, value)
        if result.events is None:
            answered()
            self.end_headers()
            self.wfile.write(data)
            return
        self.end_headers()
        last = len(result.events) - 1
        for n, line in enumerate(result.events):
            if n == last:
                answered()
            self.wfile.write(line)
            self.wfile.flush()
            if result.pause_after(n):
                time.sleep(result.chunk_delay)

    def do_GET(self) -> None:  # noqa: N802
        self._reply("GET")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        fake = self.fake
        with fake._lock:
            fake.in_flight += 1
            fake.most_in_flight = max(fake.most_in_flight, fake.in_flight)
        counted = True

        def answered() -> None:
            nonlocal counted
            if counted:
                counted = False
                with fake._lock:
                    fake.in_flight -= 1

        try:
            self._reply("POST", self.rfile.read(length), answered)
        finally:
            answered()


class _Events(httpx.AsyncByteStream):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    async def __aiter__(self):
        for n, line in enumerate(self.answer.events or []):
            yield line
            if self.answer.pause_after(n):
                await asyncio.sleep(self.answer.chunk_delay)


class FakeTransport(httpx.AsyncBaseTransport):
    """The same fake, in process: an httpx transport for the real ``openai`` client, with no
    socket. ``delib.arun(..., base_url="http://fake/v1", transport=FakeTransport(fake))``.

    Faults, scripted replies, delays and ``history`` behave as with the HTTP server, except
    that nothing can be refused at the connection (``stop()`` does not apply).
    """

    def __init__(self, fake: FakeOpenAIServer | None = None) -> None:
        self.fake = fake or FakeOpenAIServer()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        path = request.url.raw_path.decode()
        result = answer(self.fake, request.method, path, dict(request.headers), raw)
        if result.delay:
            await asyncio.sleep(result.delay)
        headers = {"Content-Type": result.content_type(), **result.headers}
        if result.events is None:
            return httpx.Response(result.status, headers=headers, content=result.payload())
        stream = _Events(result)
        return httpx.Response(result.status, headers=headers, stream=stream)


def main() -> None:
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible server for tests")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--model", action="append", help="model id to offer (repeatable)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--no-usage", action="store_true", help="do not report token usage")
    args = parser.parse_args()
    server = FakeOpenAIServer(
        models=tuple(args.model or ["test-model"]),
        delay=args.delay,
        chunk_delay=args.chunk_delay,
        usage=not args.no_usage,
        port=args.port,
    ).start()
    print(f"serving on {server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
