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
import json
import random
import re
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from delib.prompts import SELECT_MARKER, TURN_MARKER, VERDICT_MARKER

Responder = Callable[[dict], str]

# Enough words that replies drawn from them stay varied over a long debate (a healthy debate
# for the loop detectors), as real panel turns do.
_WORDS = (
    "oversight evidence proxy pointer feature circuit audit character uncertainty values "
    "verification capability trust incentive deployment society benchmark training reward "
    "generalisation interpretability honesty deception robustness transparency governance "
    "humility experiment calibration disagreement precedent threshold sycophancy scheming "
    "monitoring sandbagging elicitation debate amplification constitution preference pluralism "
    "legitimacy accountability regulator laboratory compute scaling emergence probe steering "
    "dictionary superposition activation attribution faithfulness reasoning transcript agent "
    "autonomy corrigibility shutdown goal mesa optimiser objective specification gaming "
    "distribution shift red-teaming evaluation forecasting timeline takeoff coordination treaty "
    "liability insurance audit-trail provenance watermark consent stakeholder minority culture "
    "tradeoff caution ambition curiosity stewardship fallibility revision counterexample anecdote "
    "metric survey dataset annotation rubric critique rebuttal synthesis consensus dissent"
).split()
_OPENERS = (
    "{who} argues that",
    "{who} doubts that",
    "In {who}'s view,",
    "{who} would add that",
    "Against the last point, {who} holds that",
    "{who} asks whether",
)


@dataclass
class Fault:
    """An error answer for one chat request (the next one that arrives)."""

    status: int = 500
    message: str = "injected fault"
    retry_after: float | None = None


def _last_user(request: dict) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def debate_responder(request: dict) -> str:
    """Plausible, varied replies for delib's prompts: turns, speaker choices and verdicts."""
    text = _last_user(request)
    all_text = json.dumps(request.get("messages", []))
    rng = random.Random(zlib.crc32(all_text.encode()))
    if SELECT_MARKER in text:
        ids = re.findall(r"^- ([a-z0-9][a-z0-9_-]*):", text, flags=re.M)
        return ids[-1] if ids else "nobody"
    if VERDICT_MARKER in text:
        tail = text[text.find('"positions"') :]
        positions = dict.fromkeys(re.findall(r'"([a-z0-9][a-z0-9_-]*)": "\.\.\."', tail), "")
        for pid in positions:
            positions[pid] = f"{pid} holds that {' '.join(rng.sample(_WORDS, 4))} matter most."
        verdict = {
            "summary": "The panel weighed " + ", ".join(rng.sample(_WORDS, 3)) + ".",
            "agreements": ["Verification gets harder as capability grows."],
            "disagreements": ["Whether character training generalises."],
            "open_questions": ["What evidence would change minds?"],
            "positions": positions,
        }
        return json.dumps(verdict)
    match = re.search(rf"{TURN_MARKER}, ([^.(]+)", text)
    who = match.group(1).strip() if match else "Speaker"
    sentences = []
    for _ in range(rng.randint(2, 3)):
        opener = rng.choice(_OPENERS).format(who=who)
        a, b, c, d, e = rng.sample(_WORDS, 5)
        sentences.append(f"{opener} {a} and {b} shape {c}, while {d} limits {e}.")
    return " ".join(sentences)


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
    host: str = "127.0.0.1"
    port: int = 0
    history: list[dict] = field(default_factory=list)
    _replies: deque = field(default_factory=deque)
    _faults: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # --- scripting -------------------------------------------------------------------------
    def enqueue(self, *replies: str) -> None:
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

    def _headers(self) -> dict[str, str]:
        return {key.lower(): value for key, value in self.headers.items()}

    def _send_json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": "error"}}, headers)

    def _authorised(self) -> bool:
        wanted = self.fake.require_api_key
        if wanted and self.headers.get("Authorization") != f"Bearer {wanted}":
            self._error(401, "Incorrect API key provided")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        self.fake.history.append({"path": self.path, "method": "GET", "headers": self._headers()})
        if not self._authorised():
            return
        if self.path.startswith("/_fake/requests"):
            # For benchmarks that run the server in another process: the chat request bodies
            # so far (and, with ?clear, forget them).
            bodies = [h["body"] for h in self.fake.chat_requests()]
            if "clear" in self.path:
                self.fake.history.clear()
            self._send_json(200, {"requests": bodies})
        elif self.path.rstrip("/").endswith("/v1/models"):
            data = [
                {"id": m, "object": "model", "owned_by": "delib-test"} for m in self.fake.models
            ]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._error(400, "body is not JSON")
            return
        fake = self.fake
        fake.history.append(
            {"path": self.path, "method": "POST", "body": body, "headers": self._headers()}
        )
        if not self.path.rstrip("/").endswith("/v1/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        if not self._authorised():
            return
        model = body.get("model")
        if model not in fake.models:
            self._error(404, f"The model '{model}' does not exist")
            return
        template_error = fake._template_error(body.get("messages", []))
        if template_error:
            self._error(400, template_error)
            return
        if body.get("stream") and body.get("stream_options") and fake.reject_stream_options:
            self._error(400, "Unrecognized request argument supplied: stream_options")
            return
        fault, reply = fake._next()
        if fault is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            self._error(fault.status, fault.message, headers)
            return
        if reply is None:
            try:
                reply = fake.responder(body)
            except Exception as exc:  # a broken script should fail loudly, not hang a test
                self._error(500, f"responder failed: {type(exc).__name__}: {exc}")
                return
        if fake.delay:
            time.sleep(fake.delay)
        seen = [m for m in body["messages"] if not (fake.drop_system and m.get("role") == "system")]
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in seen) // 4 + 1
        max_tokens = body.get("max_tokens")
        words = reply.split(" ")
        if max_tokens is not None and len(words) > max_tokens:
            reply, finish = " ".join(words[:max_tokens]), "length"
        else:
            finish = "stop"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(reply.split()),
            "total_tokens": prompt_tokens + len(reply.split()),
        }
        if body.get("stream"):
            self._stream(body, model, reply, finish, usage)
            return
        response = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": finish,
                }
            ],
        }
        if fake.usage:
            response["usage"] = usage
        self._send_json(200, response)

    def _stream(self, body: dict, model: str, reply: str, finish: str, usage: dict) -> None:
        fake = self.fake
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

        def event(choices: list[dict], extra: dict | None = None) -> None:
            chunk = {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
                **(extra or {}),
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        step = max(1, fake.chunk_chars)
        pieces = [reply[i : i + step] for i in range(0, len(reply), step)] or [""]
        for i, piece in enumerate(pieces):
            delta = {"content": piece} if i else {"role": "assistant", "content": piece}
            event([{"index": 0, "delta": delta, "finish_reason": None}])
            if fake.chunk_delay:
                time.sleep(fake.chunk_delay)
        event([{"index": 0, "delta": {}, "finish_reason": finish}])
        wants_usage = (body.get("stream_options") or {}).get("include_usage")
        if fake.usage and wants_usage:
            event([], {"usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


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
