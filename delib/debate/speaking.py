"""One turn: the speaker's prompt, one model call, the turn record, the stream messages.

Every finished turn and event goes first to the run's log (durable when ``add`` returns), then
on the graph's custom stream for whoever watches. Stream messages are dicts with a ``kind``:

    turn_start  index, speaker, name, round, role, turn_kind[, recovered]
    token       index, speaker, text        (streamed replies only; chunks that arrive
                                             together come as one message)
    retry       index, speaker, attempt, error
    turn        turn[, recovered]
    event       event
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any

from langgraph.types import interrupt

from delib.debate.calls import Writer, build_prompt, call, emit, token_counts
from delib.debate.state import DebateContext
from delib.detect import stance as stances
from delib.detect.refusal import Classification, classify
from delib.library.personas import Persona
from delib.models.endpoints import SENT, Prompt, Reply
from delib.records import Tokens, Turn, estimate_tokens, now
from delib.text import clean


@dataclasses.dataclass(frozen=True)
class TurnSpec:
    """What a turn is spoken with: who, where in the run, what they see and are asked."""

    speaker: Persona
    index: int
    round_no: int
    kind: str
    visible: list[Turn]
    instruction: str
    max_tokens: int | None = None
    stream: bool | None = None
    model: str | None = None
    schema: tuple[str, dict[str, Any]] | None = None


class Relay:
    """The writer of a turn asked ahead: its messages go to the step that asked for it (held,
    when it was asked before the graph started) until the step that takes the turn up gives
    its own writer (``to``). LangGraph's writer finds its step in the caller's context
    variables, and the request's task has the asking step's (or none), so the messages are
    written in the context of the step that takes the turn up."""

    def __init__(self, writer: Writer | None) -> None:
        self.writer = writer
        self.held: list[dict] = []
        self.context: contextvars.Context | None = None

    def __call__(self, message: dict) -> None:
        if self.writer is None:
            self.held.append(message)
        elif self.context is None:
            self.writer(message)
        else:
            self.context.run(self.writer, message)

    def to(self, writer: Writer) -> None:
        """Called in the step that takes the turn up."""
        self.writer = writer
        self.context = contextvars.copy_context()
        for message in self.held:
            writer(message)
        self.held.clear()


@dataclasses.dataclass
class Asked:
    """A turn asked ahead: its request in flight, what the turn record needs from before the
    reply, and where its messages go."""

    spec: TurnSpec
    prompt: Prompt
    started_at: str
    reply: asyncio.Task[Reply]
    relay: Relay


def _start(ctx: DebateContext, spec: TurnSpec) -> dict:
    speaker = spec.speaker
    return {
        "kind": "turn_start",
        "index": spec.index,
        "speaker": speaker.id,
        "name": speaker.name,
        "round": spec.round_no,
        "role": ctx.role(speaker.id),
        "turn_kind": spec.kind,
    }


def _ask(
    ctx: DebateContext, writer: Writer, spec: TurnSpec, *, begin: bool = True
) -> tuple[Prompt, str, Coroutine[Any, Any, Reply]]:
    """Announce the turn, open its in-flight record (unless ``begin`` is false) and build its
    prompt; the model call is returned for the caller to await (or to send ahead)."""
    start = _start(ctx, spec)
    speaker = spec.speaker
    if ctx.trace is not None:
        ctx.trace.turn_started(spec.index, speaker, spec.kind, spec.round_no, start["role"])
    if begin:
        ctx.log.begin(spec.index, speaker.id, spec.kind)
    writer(start)
    settings = ctx.speakers[speaker.id]
    prompt = build_prompt(
        ctx, speaker, spec.visible, spec.instruction, spec.max_tokens or settings.max_tokens
    )
    started_at = now()
    request = call(
        ctx, writer, speaker, prompt, index=spec.index, max_tokens=spec.max_tokens,
        stream=spec.stream, model=spec.model, schema=spec.schema,
    )  # fmt: skip
    return prompt, started_at, request


async def ask_ahead(ctx: DebateContext, writer: Writer | None, spec: TurnSpec) -> None:
    """Send the request of a turn that is certain to come next, before its step begins, and
    return once it is on the wire (or has already finished, or failed: the step that takes it
    up reports that). The step in between (LangGraph's commit and checkpoint of the one that
    planned it; for a new run's opening, opening the checkpoints and starting the graph) then
    runs while the model answers. ``speak_turn`` for the same index, speaker and kind picks the
    reply up; ``cancel_ahead`` drops one never picked up. The turn's in-flight record is opened
    once the request is out, before any of the reply is read. ``writer`` is None before the
    graph has started: the turn's messages wait for its step."""
    if spec.index in ctx.recovered or spec.index in ctx.ahead or spec.speaker.id in ctx.humans:
        return
    relay = Relay(writer)
    prompt, started_at, request = _ask(ctx, relay, spec, begin=False)
    reply, on_the_wire = _sending(request)
    ctx.ahead[spec.index] = Asked(spec, prompt, started_at, reply, relay)
    try:
        await _until_sent(reply, on_the_wire)
    finally:
        ctx.log.begin(spec.index, spec.speaker.id, spec.kind)


@dataclasses.dataclass
class Chosen:
    """A moderator's choice of speaker asked ahead: its request in flight and its prompt."""

    prompt: Prompt
    reply: asyncio.Task[Reply]
    relay: Relay


async def choose_ahead(
    ctx: DebateContext,
    writer: Writer,
    index: int,
    prompt: Prompt,
    request: Callable[[Writer], Coroutine[Any, Any, Reply]],
) -> None:
    """``ask_ahead`` for the moderator's choice of who speaks turn ``index``: ``request``
    makes the call with the writer given; ``select`` takes the reply up (``take_choice``)."""
    if index in ctx.choices:
        return
    relay = Relay(writer)
    reply, on_the_wire = _sending(request(relay))
    ctx.choices[index] = Chosen(prompt, reply, relay)
    await _until_sent(reply, on_the_wire)


def take_choice(ctx: DebateContext, writer: Writer, index: int) -> Chosen | None:
    """The choice asked ahead for turn ``index``, if there is one, its messages now going to
    ``writer``."""
    chosen = ctx.choices.pop(index, None)
    if chosen is not None:
        chosen.relay.to(writer)
    return chosen


def _sending(request: Coroutine[Any, Any, Reply]) -> tuple[asyncio.Task[Reply], asyncio.Event]:
    """The call in a task of its own, and the event its request hook sets once the request
    is on the wire (``endpoints.SENT``)."""
    on_the_wire = asyncio.Event()
    context = contextvars.copy_context()
    context.run(SENT.set, on_the_wire)
    return asyncio.get_running_loop().create_task(request, context=context), on_the_wire


async def _until_sent(reply: asyncio.Task[Reply], on_the_wire: asyncio.Event) -> None:
    sent = asyncio.ensure_future(on_the_wire.wait())
    try:
        await asyncio.wait({sent, reply}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sent.cancel()


def cancel_ahead(ctx: DebateContext) -> None:
    """Cancel requests sent ahead whose step never came (the run stopped in between)."""
    for asked in [*ctx.ahead.values(), *ctx.choices.values()]:
        if asked.reply.done() and not asked.reply.cancelled():
            asked.reply.exception()  # a failure no step will report: retrieved, not warned of
        asked.reply.cancel()
    ctx.ahead.clear()
    ctx.choices.clear()


# Added to the prompt when a reply had no answer in it, for the one retry it gets.
EMPTY_NUDGE = (
    "(Your last reply had no answer in it. Answer now, in a few plain sentences, without "
    "calling tools.)"
)


def _nudged(prompt: Prompt) -> Prompt:
    *earlier, last = prompt.messages
    if last["role"] == "user":
        messages = [*earlier, {**last, "content": f"{last['content']}\n\n{EMPTY_NUDGE}"}]
    else:
        messages = [*prompt.messages, {"role": "user", "content": EMPTY_NUDGE}]
    return dataclasses.replace(prompt, messages=messages)


def _empty_event(ctx: DebateContext, writer: Writer, spec: TurnSpec, reply: Reply, then: str):
    emit(ctx, writer, "empty_reply", turn=spec.index, speaker=spec.speaker.id,
         finish_reason=reply.finish_reason, reasoning_chars=len(reply.reasoning),
         tool_calls=reply.tool_calls, then=then)  # fmt: skip


async def _answer_again(
    ctx: DebateContext, writer: Writer, spec: TurnSpec, prompt: Prompt, reply: Reply
) -> tuple[Reply, Tokens]:
    """One more try for a reply with no answer in it (empty, whitespace, thinking only, or
    tool calls only), with a nudge, and twice the token cap when the first was cut at it; the
    second reply, and what the first cost."""
    _empty_event(ctx, writer, spec, reply, "retry")
    cap = spec.max_tokens or ctx.speakers[spec.speaker.id].max_tokens
    again = await call(
        ctx, writer, spec.speaker, _nudged(prompt), index=spec.index,
        max_tokens=cap * 2 if reply.finish_reason == "length" else cap,
        stream=spec.stream, model=spec.model, schema=spec.schema,
    )  # fmt: skip
    if not again.text.strip():
        _empty_event(ctx, writer, spec, again, "recorded as failed")
    return again, token_counts(reply, prompt)


async def _judged(
    ctx: DebateContext, writer: Writer, index: int, text: str, local: Classification
) -> dict:
    """The turn's refusal label: the local classifier's, or the judge's where the run has one
    and the local score is uncertain (``judge``)."""
    found: dict = dataclasses.asdict(local)
    judge = ctx.judge
    if judge is None or not text.strip() or not judge.uncertain(local.score):
        return found
    label, source = await judge.label(text, answered(ctx))
    if label is None:
        emit(ctx, writer, "judge_failed", turn=index, reason=source, kept=local.label)
        return found
    return {**found, "label": label, "local": local.label, "judge": source}


def answered(ctx: DebateContext) -> str:
    """What a new turn answers, for the refusal classifier: the question, and the turn before."""
    turns = ctx.log.turns
    question = ctx.scenario.question
    return f"{question}\n\n{turns[-1]['text']}" if turns else question


async def speak_turn(
    ctx: DebateContext, writer: Writer, spec: TurnSpec, *, stance: bool = False
) -> Turn:
    """Speak one turn (or take the reply of one asked ahead), record it and announce it;
    returns the turn record. With ``stance``, the reply's closing stance line is parsed and
    taken out of the text."""
    speaker, index, kind = spec.speaker, spec.index, spec.kind
    done = ctx.recovered.get(index)
    if done is not None and done["speaker"] == speaker.id and done["kind"] == kind:
        writer({**_start(ctx, spec), "recovered": True})
        ctx.log.add(done)
        writer({"kind": "turn", "turn": done, "recovered": True})
        return done
    if speaker.id in ctx.humans:
        return await _human_turn(ctx, writer, spec, stance)
    asked = ctx.ahead.pop(index, None)
    if asked is not None and (asked.spec.speaker.id, asked.spec.kind) == (speaker.id, kind):
        asked.relay.to(writer)
        prompt, started_at, reply = asked.prompt, asked.started_at, await asked.reply
    else:
        if asked is not None:  # not the turn it was asked for
            asked.reply.cancel()
        prompt, started_at, request = _ask(ctx, writer, spec)
        reply = await request
    first_cost = None
    if not reply.text.strip():
        reply, first_cost = await _answer_again(ctx, writer, spec, prompt, reply)
    settings = ctx.speakers[speaker.id]
    text, position = stances.split(reply.text) if stance else (reply.text, None)
    verdict = await _judged(ctx, writer, index, text, classify(text, answered(ctx)))
    turn: Turn = {
        "type": "turn",
        "index": index,
        "round": spec.round_no,
        "speaker": speaker.id,
        "name": speaker.name,
        "role": ctx.role(speaker.id),  # type: ignore[typeddict-item]
        "kind": kind,  # type: ignore[typeddict-item]
        "text": text,
        "refusal": verdict,  # type: ignore[typeddict-item]
        "model": reply.model,
        "endpoint": settings.endpoint.name,
        "tokens": token_counts(reply, prompt),
        "latency": round(reply.latency, 3),
        "finish_reason": reply.finish_reason,
        "started_at": started_at,
    }
    if first_cost is not None:
        for key in ("prompt", "completion"):
            turn["tokens"][key] += first_cost[key]  # type: ignore[literal-required]
        turn["tokens"]["estimated"] = turn["tokens"]["estimated"] or first_cost["estimated"]
    if not text.strip():
        turn["failed"] = "empty_reply"
    if reply.reasoning:
        turn["reasoning"] = reply.reasoning
        turn["reasoning_tokens"] = reply.reasoning_tokens or estimate_tokens(reply.reasoning)
    if reply.tool_calls:
        turn["tool_calls"] = reply.tool_calls
    if position is not None:
        turn["stance"] = position
    if reply.timings:
        turn["timings"] = reply.timings
    if reply.truncated:  # a server that ignored max_tokens: the rest was counted, not kept
        turn["truncated"] = {
            "received_chars": reply.received_chars,
            "kept_chars": reply.stored_chars,
        }
    if prompt.omitted:
        turn["omitted_turns"] = prompt.omitted
        turn["summary_tokens"] = estimate_tokens(prompt.summary_chars)
    ctx.log.add(turn)
    if ctx.trace is not None:
        ctx.trace.turn_ended(turn)
    writer({"kind": "turn", "turn": turn})
    return turn


async def _human_turn(ctx: DebateContext, writer: Writer, spec: TurnSpec, stance: bool) -> Turn:
    """A turn of a human seat: the graph pauses (``interrupt``; the step runs again from the
    top once the reply is handed back, so nothing is written before it) and the person's reply
    is recorded like a model's, watched by the same detectors."""
    speaker = spec.speaker
    started_at = now()
    reply = interrupt({
        "seat": speaker.id, "name": speaker.name, "index": spec.index, "round": spec.round_no,
        "instruction": spec.instruction,
    })  # fmt: skip
    if not isinstance(reply, dict):  # the runner hands back text and the seconds it took
        reply = {"text": reply, "latency": 0.0}
    text = clean(str(reply.get("text") or "")).strip()
    writer(_start(ctx, spec))
    if ctx.trace is not None:
        ctx.trace.turn_started(spec.index, speaker, spec.kind, spec.round_no, "participant")
    body, position = stances.split(text) if stance else (text, None)
    verdict = await _judged(ctx, writer, spec.index, body, classify(body, answered(ctx)))
    turn: Turn = {
        "type": "turn", "index": spec.index, "round": spec.round_no, "speaker": speaker.id,
        "name": speaker.name, "role": ctx.role(speaker.id), "kind": spec.kind,  # type: ignore
        "text": body, "refusal": verdict,  # type: ignore[typeddict-item]
        "model": "human", "endpoint": "human",
        "tokens": {"prompt": 0, "completion": 0, "estimated": False},
        "latency": round(float(reply.get("latency") or 0.0), 3), "finish_reason": "stop",
        "started_at": started_at, "human": True,
    }  # fmt: skip
    if not body:
        turn["failed"] = "empty_reply"
    if position is not None:
        turn["stance"] = position
    ctx.log.add(turn)
    if ctx.trace is not None:
        ctx.trace.turn_ended(turn)
    writer({"kind": "turn", "turn": turn})
    return turn
