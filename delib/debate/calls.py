"""One model call of a speaker, and what it cost: the prompt built to fit, the call streamed
to the run's writer (tokens and retries as stream messages), the token counts, the events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from delib.debate import prompts
from delib.debate.routing import prompt_limit, reply_cap
from delib.debate.state import DebateContext
from delib.library.personas import Persona
from delib.models.endpoints import Prompt, Reply
from delib.records import Event, Tokens, Turn, estimate_tokens, make_event

Writer = Callable[[dict], None]


# No tokenizer puts more characters than this in one token: a reply longer than its reported
# completion tokens allow was counted wrong (or not capped by the server), and is estimated.
MAX_CHARS_PER_TOKEN = 32


def token_counts(reply: Reply, prompt: Prompt) -> Tokens:
    """What the server reported, else (or where the report cannot be true) an estimate from
    all the text received."""
    received = max(reply.received_chars, len(reply.text))
    implausible = (reply.completion_tokens or 0) * MAX_CHARS_PER_TOKEN < received
    if reply.usage_reported and not implausible:
        return {
            "prompt": reply.prompt_tokens or 0,
            "completion": reply.completion_tokens or 0,
            "estimated": False,
        }
    return {
        "prompt": reply.prompt_tokens or estimate_tokens(prompt.chars()),
        "completion": estimate_tokens(received),
        "estimated": True,
    }


def emit(ctx: DebateContext, writer: Writer, name: str, **fields: Any) -> Event:
    """Record an event and announce it."""
    event = make_event(name, **fields)
    ctx.log.add(event)
    writer({"kind": "event", "event": event})
    return event


def build_prompt(
    ctx: DebateContext, speaker: Persona, turns: list[Turn], instruction: str, reply_tokens: int
) -> Prompt:
    """The speaker's prompt, trimmed to its endpoint's context if that is known."""
    endpoint = ctx.speakers[speaker.id].endpoint
    limit = prompt_limit(endpoint.config.context_tokens, reply_tokens)
    layout = ctx.prompt_layout or endpoint.layout()
    return prompts.build(speaker, ctx.scenario, ctx.cast, turns, instruction, limit, layout)


async def call(
    ctx: DebateContext,
    writer: Writer,
    speaker: Persona,
    prompt: Prompt,
    *,
    index: int,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stream: bool | None = None,
    model: str | None = None,
    schema: tuple[str, dict[str, Any]] | None = None,
) -> Reply:
    """One model call for this speaker, streaming tokens and retries to the writer; with
    ``schema``, asking for JSON that fits it where the endpoint can."""
    settings = ctx.speakers[speaker.id]
    client = ctx.clients.get(settings.endpoint)
    streaming = ctx.stream if stream is None else stream

    loop = asyncio.get_running_loop()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            text = "".join(pending)
            pending.clear()
            ctx.log.token(index, text)
            writer({"kind": "token", "index": index, "speaker": speaker.id, "text": text})

    def on_token(text: str) -> None:
        # Chunks that arrive together (one read from the socket) go out as one message at
        # the end of that turn of the event loop; a chunk on its own goes out at once.
        if not pending:
            loop.call_soon(flush)
        pending.append(text)

    def on_retry(attempt: int, error: str) -> None:
        flush()
        message = {"kind": "retry", "index": index, "speaker": speaker.id}
        writer({**message, "attempt": attempt, "error": error})

    assert settings.model is not None
    cap = reply_cap(
        max_tokens or settings.max_tokens, prompt.chars(), settings.endpoint.config.context_tokens
    )
    asked_model = model or settings.model
    heat = settings.temperature if temperature is None else temperature
    trace = ctx.trace
    span = trace.call_started(index, settings.endpoint, asked_model, cap, heat) if trace else None
    try:
        reply = await client.complete(
            prompt,
            model=asked_model,
            temperature=heat,
            max_tokens=cap,
            seed=ctx.seed,
            stream=streaming,
            on_token=on_token if streaming else None,
            on_retry=on_retry,
            schema=schema,
        )
    except BaseException as exc:
        if span is not None:
            trace.call_ended(span, error=exc)
        raise
    finally:
        flush()  # every token message before the turn's own
    if span is not None:
        trace.call_ended(span, reply)
    return reply
