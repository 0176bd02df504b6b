"""What the scripted OpenAI server says to one request (``answer``): shared by the HTTP server on
loopback and the in-process ``FakeTransport`` of ``delib.testing``. It reads the server's
script through ``Scripted`` (what ``server.FakeOpenAIServer`` provides), so this module does not
import the server."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from delib.testing.responders import conform, sse_events


class Scripted(Protocol):
    """What ``answer`` reads and records of the server's script (``FakeOpenAIServer``)."""

    models: tuple[str, ...]
    responder: Any  # the body of a chat request -> the reply's text
    usage: bool
    delay: float
    chunk_delay: float
    chunk_chars: int
    drop_system: bool
    reject_stream_options: bool
    require_api_key: str | None
    models_body: bytes | None
    structured: str | None
    structured_invalid: bool
    structured_status: int
    history: list[dict]

    def chat_requests(self) -> list[dict]: ...
    def _next(self) -> tuple[Any, str | None]: ...  # the next fault (or None) and reply
    def _template_error(self, messages: list[dict]) -> str | None: ...


@dataclass(frozen=True)
class Shaped:
    """A scripted reply in a shape real servers send (``server.enqueue(Shaped(...))``): content
    (None for none at all), thinking in a field of its own (``field``: ``reasoning_content`` as
    vLLM and DeepSeek name it, or ``reasoning``), tool calls instead of content, or a finish
    reason of its choosing (``length`` for a reply cut at its cap)."""

    content: str | None = ""
    reasoning: str = ""
    field: str = "reasoning_content"
    tool_calls: bool = False
    finish: str | None = None


@dataclass
class Answer:
    """One response of the fake: a JSON body, or server-sent events streamed one by one."""

    status: int = 200
    body: dict | None = None
    events: list[bytes] | None = None  # SSE lines, for a streamed reply
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before the first byte
    chunk_delay: float = 0.0  # between events
    raw: bytes | None = None  # a body sent as is instead of ``body`` as JSON
    media_type: str | None = None  # instead of the JSON or event-stream content type
    raw_events: bool = False  # delay between every event, the last ones too

    def content_type(self) -> str:
        if self.media_type:
            return self.media_type
        return "text/event-stream" if self.events is not None else "application/json"

    def payload(self) -> bytes:
        return self.raw if self.raw is not None else json.dumps(self.body).encode()

    def pause_after(self, n: int) -> bool:
        return bool(self.chunk_delay) and (self.raw_events or n < len(self.events or []) - 2)


def _message(reply: str, shape: Shaped | None) -> dict:
    message: dict = {"role": "assistant", "content": reply}
    if shape is None:
        return message
    if shape.content is None or shape.tool_calls:
        message["content"] = None
    if shape.reasoning:
        message[shape.field] = shape.reasoning
    if shape.tool_calls:
        message["tool_calls"] = [TOOL_CALL]
    return message


TOOL_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "look_up", "arguments": "{\"q\": \"oversight\"}"}}  # fmt: skip


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"error": {"message": message, "type": "error"}}, headers=headers or {})


def answer(fake: Scripted, method: str, path: str, headers: dict, raw: bytes) -> Answer:
    """What the fake says to one request; shared by the HTTP server and ``FakeTransport``."""
    headers = {key.lower(): value for key, value in headers.items()}
    if method == "GET":
        fake.history.append({"path": path, "method": "GET", "headers": headers})
    else:
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return _error(400, "body is not JSON")
        fake.history.append({"path": path, "method": "POST", "body": body, "headers": headers})
    wanted = fake.require_api_key
    if wanted and headers.get("authorization") != f"Bearer {wanted}":
        return _error(401, "Incorrect API key provided")
    if method == "GET":
        if path.startswith("/_fake/requests"):
            # For benchmarks that run the server in another process: the chat request bodies
            # so far (and, with ?clear, forget them).
            bodies = [h["body"] for h in fake.chat_requests()]
            if "clear" in path:
                fake.history.clear()
            return Answer(200, {"requests": bodies})
        if path.rstrip("/").endswith("/v1/models"):
            if fake.models_body is not None:
                return Answer(200, raw=fake.models_body, media_type="text/html")
            data = [{"id": m, "object": "model", "owned_by": "delib-test"} for m in fake.models]
            return Answer(200, {"object": "list", "data": data})
        return _error(404, f"no route {path}")
    if not path.rstrip("/").endswith("/v1/chat/completions"):
        return _error(404, f"no route {path}")
    model = body.get("model")
    if model not in fake.models:
        return _error(404, f"The model '{model}' does not exist")
    template_error = fake._template_error(body.get("messages", []))
    if template_error:
        return _error(400, template_error)
    if body.get("stream") and body.get("stream_options") and fake.reject_stream_options:
        return _error(400, "Unrecognized request argument supplied: stream_options")
    wanted = body.get("response_format")
    if wanted and fake.structured and wanted.get("type") not in ("text", fake.structured):
        if fake.structured_status == 500:  # as llama-cpp-python's server words it, traceback too
            return _error(500, "1 validation error:\n  {'type': 'literal_error', 'loc': "
                          "('body', 'response_format', 'type'), 'msg': \"Input should be 'text' "
                          f"or '{fake.structured}'\", 'input': {wanted.get('type')!r}}}\n\n"
                          '  File "llama_cpp/server/app.py", line 376, in '
                          "create_chat_completion\n    POST /v1/chat/completions")  # fmt: skip
        return _error(400, f"response_format type {wanted.get('type')!r} is not supported")
    fault, reply = fake._next()
    if fault is not None:
        if fault.events is not None:
            return Answer(fault.status, events=fault.events, chunk_delay=fault.chunk_delay,
                          media_type=fault.content_type, raw_events=True)  # fmt: skip
        if fault.body is not None:
            return Answer(fault.status, raw=fault.body, media_type=fault.content_type)
        extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
        return _error(fault.status, fault.message, extra)
    if reply is None:
        try:
            reply = fake.responder(body)
        except Exception as exc:  # a broken script should fail loudly, not hang a test
            return _error(500, f"responder failed: {type(exc).__name__}: {exc}")
    shape = reply if isinstance(reply, Shaped) else None
    if shape is not None:
        reply = shape.content or ""
    if wanted and wanted.get("type") == fake.structured:
        schema = wanted.get("schema") or (wanted.get("json_schema") or {}).get("schema")
        reply = conform(reply, schema, fake.structured_invalid)
    seen = [m for m in body["messages"] if not (fake.drop_system and m.get("role") == "system")]
    prompt_tokens = sum(len(str(m.get("content", ""))) for m in seen) // 4 + 1
    max_tokens = body.get("max_tokens")
    words = reply.split(" ")
    if max_tokens is not None and len(words) > max_tokens:
        reply, finish = " ".join(words[:max_tokens]), "length"
    else:
        finish = "stop"
    if shape is not None and shape.finish:
        finish = shape.finish
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(reply.split()),
        "total_tokens": prompt_tokens + len(reply.split()),
    }
    if body.get("stream"):
        return Answer(
            200,
            events=sse_events(
                reply, model, finish, usage if fake.usage else None, fake.chunk_chars, body, shape
            ),
            headers={"Cache-Control": "no-cache"},
            delay=fake.delay,
            chunk_delay=fake.chunk_delay,
        )
    response = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": _message(reply, shape),
                "finish_reason": finish,
            }
        ],
    }
    if fake.usage:
        response["usage"] = usage
    return Answer(200, response, delay=fake.delay)
