"""Reading one chat completion off the wire, whole or streamed, trusting nothing in it.

A reply is finished only when the server says so: a finish reason (streams also end with
``[DONE]``, which the client consumes). Anything else with status 200 (a body that is not a
chat completion, no choices, garbage or non-UTF-8 events, an error event in the middle of a
stream, a stream closed early) raises ``BadReply``, which is retried like a 5xx. Two deadlines
hold for every request: ``timeout`` for the whole of it and ``idle_timeout`` between streamed
chunks; running past either raises ``Stalled``. Lone surrogates, which no file can hold, become
U+FFFD.

A reasoning model's thinking (``<think>`` blocks in the content, or a ``reasoning_content`` /
``reasoning`` field) goes into ``Reply.reasoning``, never into ``Reply.text``, and is not
streamed to the live view (``thinking``). Tool calls are counted, not kept.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from delib.models import thinking
from delib.models.failures import BadReply, Stalled
from delib.text import clean

TokenCallback = Callable[[str], None]
# A reply longer than its max_tokens allows (a server that ignores the cap) is kept up to this
# many characters a token, at least MIN_KEPT_CHARS; the rest is counted, not stored.
KEPT_CHARS_PER_TOKEN = 16
MIN_KEPT_CHARS = 32_000
# What the client raises when a 200 body or an event is not what it claims to be.
MALFORMED = (
    json.JSONDecodeError,
    UnicodeDecodeError,
    pydantic.ValidationError,
    KeyError,
    TypeError,
    AttributeError,
)


@dataclass
class Reply:
    """A finished model reply and what it cost."""

    text: str
    model: str
    latency: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    timings: dict[str, Any] | None = None  # llama.cpp reports prompt/eval timings
    received_chars: int = 0  # all the content that came
    stored_chars: int = 0  # how much of it was kept (thinking included)
    reasoning: str = ""  # the model's thinking, apart from its answer
    reasoning_tokens: int | None = None  # as the server reports them
    tool_calls: int = 0  # tool calls it made instead of (or beside) an answer

    @property
    def usage_reported(self) -> bool:
        return self.prompt_tokens is not None or self.completion_tokens is not None

    @property
    def truncated(self) -> bool:
        return self.received_chars > self.stored_chars


def _reasoning_tokens(usage: Any) -> int | None:
    details = getattr(usage, "completion_tokens_details", None)
    value = getattr(details, "reasoning_tokens", None)
    return value if isinstance(value, int) else None


def _finish(reply: Reply, content: str, field: str) -> None:
    """The answer and the thinking of a reply from its whole content and reasoning field."""
    answer, thought = thinking.split(content)
    reply.text = answer
    reply.reasoning = "\n\n".join(part for part in (clean(field).strip(), thought) if part)


def kept_chars(params: dict[str, Any]) -> int:
    """How much of a reply is stored, for its max_tokens."""
    return max(MIN_KEPT_CHARS, int(params.get("max_tokens") or 0) * KEPT_CHARS_PER_TOKEN)


# What ``chat.completions.create`` passes as request options (``security`` since openai 3.0:
# the API key goes out as a bearer token).
OPTIONS: dict[str, Any] = {"security": {"bearer_auth": True}}


async def send(client: openai.AsyncOpenAI, params: dict[str, Any]) -> Any:
    """``client.chat.completions.create(**params)`` as the client sends it, less its request
    transform: a walk over the body against the typed parameters that costs about 0.4 ms a
    call and hands delib's bodies back unchanged (plain JSON: strings, numbers, lists and
    dicts of them; ``tests/test_wire.py`` checks both: the same JSON and the same headers
    reach the loopback server)."""
    return await client.post(
        "/chat/completions",
        body=params,
        options=OPTIONS,
        cast_to=ChatCompletion,
        stream=bool(params.get("stream")),
        stream_cls=openai.AsyncStream[ChatCompletionChunk],
    )


def _malformed(exc: BaseException) -> BadReply:
    if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIStatusError):
        return BadReply(f"the server reported an error mid-reply: {exc.message}")
    detail = str(exc).split("\n", 1)[0][:200]
    return BadReply(f"the reply was malformed ({type(exc).__name__}: {detail})")


async def read_whole(client: openai.AsyncOpenAI, params: dict[str, Any], timeout: float) -> Reply:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            response = await send(client, params)
    except TimeoutError:
        raise Stalled("timeout", timeout, "did not answer within") from None
    except MALFORMED as exc:
        raise _malformed(exc) from None
    if not isinstance(response, ChatCompletion):
        raise BadReply(f"the body is not a chat completion ({type(response).__name__})")
    try:
        choice = response.choices[0]
        message = choice.message
        text = message.content
        finish = choice.finish_reason
        calls = len(message.tool_calls or [])
    except (*MALFORMED, IndexError):
        raise BadReply("the reply has no choices") from None
    if finish is None or not isinstance(text, str | None):
        raise BadReply("the reply has no finish reason: it was cut short")
    usage = response.usage
    extra = response.model_extra or {}
    text = clean(text or "")
    kept = text[: kept_chars(params)]
    reply = Reply(
        text="",
        received_chars=len(text),
        stored_chars=len(kept),
        model=response.model if isinstance(response.model, str) else params["model"],
        latency=time.perf_counter() - started,
        prompt_tokens=getattr(usage, "prompt_tokens", None),
        completion_tokens=getattr(usage, "completion_tokens", None),
        reasoning_tokens=_reasoning_tokens(usage),
        finish_reason=finish,
        timings=extra.get("timings"),
        tool_calls=calls,
    )
    _finish(reply, kept, thinking.field_of(message)[: kept_chars(params)])
    return reply


async def read_stream(
    client: openai.AsyncOpenAI,
    params: dict[str, Any],
    timeout: float,
    idle_timeout: float,
    on_token: TokenCallback | None,
) -> Reply:
    started = time.perf_counter()
    reply = Reply(text="", model=params["model"], latency=0.0)
    parts: list[str] = []
    thoughts: list[str] = []
    room = kept_chars(params)
    live = thinking.LiveFilter()

    def shown(text: str) -> None:
        if on_token is not None and (answer := live.feed(text)):
            on_token(answer)

    try:
        async with asyncio.timeout(timeout):
            stream = await send(client, params)
            async with stream:
                loop = asyncio.get_running_loop()
                # One idle deadline, moved on at most every tenth of the idle timeout (not a
                # timer per chunk): a stall is noticed after 1 to 1.1 idle timeouts.
                step = idle_timeout / 10
                moved = loop.time()
                try:
                    async with asyncio.timeout_at(moved + idle_timeout + step) as idle:
                        async for chunk in stream:
                            if (moment := loop.time()) - moved >= step:
                                idle.reschedule(moment + idle_timeout + step)
                                moved = moment
                            room = _take(chunk, reply, parts, thoughts, shown, room)
                except TimeoutError:
                    if idle.expired():
                        raise Stalled(
                            "idle_timeout", idle_timeout, "sent no part of the reply for"
                        ) from None
                    raise
    except TimeoutError:
        raise Stalled("timeout", timeout, "did not finish its reply within") from None
    except (openai.APIStatusError, openai.APIConnectionError):
        raise  # the retry policy's to judge
    except (*MALFORMED, openai.APIError) as exc:
        raise _malformed(exc) from None
    if reply.finish_reason is None:
        got = f" after {len(''.join(parts))} characters" if parts else ""
        raise BadReply(f"the stream ended without a finish reason{got}: the reply was cut short")
    if on_token is not None and (rest := live.flush()):
        on_token(rest)
    content = "".join(parts)
    reply.stored_chars = len(content)
    _finish(reply, content, "".join(thoughts))
    reply.latency = time.perf_counter() - started
    return reply


def _take(
    chunk: Any,
    reply: Reply,
    parts: list[str],
    thoughts: list[str],
    on_token: TokenCallback,
    room: int,
) -> int:
    """One streamed chunk into the reply being built; returns the room left for text."""
    if getattr(chunk, "object", None) == "chat.completion":
        raise BadReply("the server answered a stream request with a whole reply")
    if chunk.model:
        reply.model = chunk.model
    if chunk.usage is not None:
        reply.prompt_tokens = chunk.usage.prompt_tokens
        reply.completion_tokens = chunk.usage.completion_tokens
        reply.reasoning_tokens = _reasoning_tokens(chunk.usage)
    timings = (chunk.model_extra or {}).get("timings")
    if timings:
        reply.timings = timings
    for choice in chunk.choices or []:
        delta = choice.delta
        content = delta.content if delta else None
        if delta is not None:
            if thought := thinking.field_of(delta):
                thoughts.append(thought[: max(room, 0)])
                room -= len(thought)
            if delta.tool_calls:  # one call comes in several deltas, by index
                last = max(getattr(call, "index", 0) or 0 for call in delta.tool_calls)
                reply.tool_calls = max(reply.tool_calls, last + 1)
        if content:
            reply.received_chars += len(content)
            content = clean(content[: max(room, 0)])
            room -= len(content)
            if content:
                parts.append(content)
                on_token(content)
        if choice.finish_reason:
            reply.finish_reason = choice.finish_reason
    return room
