"""One turn: the speaker's prompt, one model call, the turn record, the stream messages.

Every finished turn and event goes first to the run's log (durable when ``add`` returns), then
on the graph's custom stream for whoever watches. Stream messages are dicts with a ``kind``:

    turn_start  index, speaker, name, round, role, turn_kind[, recovered]
    token       index, speaker, text        (streamed replies only)
    retry       index, speaker, attempt, error
    turn        turn[, recovered]
    event       event
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from delib import prompts
from delib import stance as stances
from delib.endpoints import Prompt, Reply
from delib.personas import Persona
from delib.records import Event, Tokens, Turn, estimate_tokens, make_event, now
from delib.refusal import classify
from delib.routing import prompt_limit, reply_cap
from delib.state import DebateContext

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

    def on_token(text: str) -> None:
        ctx.log.token(index, text)
        writer({"kind": "token", "index": index, "speaker": speaker.id, "text": text})

    def on_retry(attempt: int, error: str) -> None:
        message = {"kind": "retry", "index": index, "speaker": speaker.id}
        writer({**message, "attempt": attempt, "error": error})

    assert settings.model is not None
    cap = reply_cap(
        max_tokens or settings.max_tokens, prompt.chars(), settings.endpoint.config.context_tokens
    )
    return await client.complete(
        prompt,
        model=model or settings.model,
        temperature=settings.temperature if temperature is None else temperature,
        max_tokens=cap,
        seed=ctx.seed,
        stream=streaming,
        on_token=on_token if streaming else None,
        on_retry=on_retry,
        schema=schema,
    )


async def speak_turn(
    ctx: DebateContext,
    writer: Writer,
    speaker: Persona,
    *,
    index: int,
    round_no: int,
    kind: str,
    visible: list[Turn],
    instruction: str,
    max_tokens: int | None = None,
    stream: bool | None = None,
    model: str | None = None,
    schema: tuple[str, dict[str, Any]] | None = None,
    stance: bool = False,
) -> Turn:
    """Speak one turn, record it and announce it; returns the turn record. With ``stance``,
    the reply's closing stance line is parsed and taken out of the text."""
    start = {
        "kind": "turn_start",
        "index": index,
        "speaker": speaker.id,
        "name": speaker.name,
        "round": round_no,
        "role": ctx.role(speaker.id),
        "turn_kind": kind,
    }
    done = ctx.recovered.get(index)
    if done is not None and done["speaker"] == speaker.id and done["kind"] == kind:
        writer({**start, "recovered": True})
        ctx.log.add(done)
        writer({"kind": "turn", "turn": done, "recovered": True})
        return done
    ctx.log.begin(index, speaker.id, kind)
    writer(start)
    settings = ctx.speakers[speaker.id]
    prompt = build_prompt(ctx, speaker, visible, instruction, max_tokens or settings.max_tokens)
    started_at = now()
    reply = await call(
        ctx, writer, speaker, prompt, index=index, max_tokens=max_tokens, stream=stream,
        model=model, schema=schema,
    )  # fmt: skip
    text, position = stances.split(reply.text) if stance else (reply.text, None)
    turn: Turn = {
        "type": "turn",
        "index": index,
        "round": round_no,
        "speaker": speaker.id,
        "name": speaker.name,
        "role": start["role"],  # type: ignore[typeddict-item]
        "kind": kind,  # type: ignore[typeddict-item]
        "text": text,
        "refusal": dataclasses.asdict(classify(text)),  # type: ignore[typeddict-item]
        "model": reply.model,
        "endpoint": settings.endpoint.name,
        "tokens": token_counts(reply, prompt),
        "latency": round(reply.latency, 3),
        "finish_reason": reply.finish_reason,
        "started_at": started_at,
    }
    if position is not None:
        turn["stance"] = position
    if reply.timings:
        turn["timings"] = reply.timings
    if reply.truncated:  # a server that ignored max_tokens: the rest was counted, not kept
        turn["truncated"] = {"received_chars": reply.received_chars, "kept_chars": len(reply.text)}
    if prompt.omitted:
        turn["omitted_turns"] = prompt.omitted
        turn["summary_tokens"] = estimate_tokens(prompt.summary_chars)
    ctx.log.add(turn)
    writer({"kind": "turn", "turn": turn})
    return turn
