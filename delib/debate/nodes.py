"""The debate's nodes: plain async functions over the state and the run's context.

Each takes ``(state, runtime)`` (``speak`` takes its ``SpeakTask``), reads the fixed setup from
``runtime.context`` and returns a partial state update. Model calls happen only here, through
``speaking``; the decisions they carry out are pure functions in ``routing`` and ``ladder``.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from delib.debate import prompts
from delib.debate.calls import build_prompt, call, emit, token_counts
from delib.debate.ladder import LADDER, climb, resolved
from delib.debate.routing import (
    merged,
    next_task,
    then_plan,
    transcript_tokens,
    verdict_tokens,
    visible,
)
from delib.debate.speaking import TurnSpec, ask_ahead, choose_ahead, speak_turn, take_choice
from delib.debate.state import DebateContext, DebateState, SpeakTask, StopReason
from delib.debate.verdict import parse_verdict
from delib.detect.loops import Detection, LoopMode, detect
from delib.models.retries import Unusable, until_usable
from delib.models.structured import speaker_schema, verdict_schema
from delib.records import estimate_tokens, spent

# Participant turns in a row with no answer in them (each retried once) that end the run.
EMPTY_STREAK = 2
EMPTY_HINT = (
    "the model answered nothing, twice, even when asked again: raise --max-tokens (a "
    "reasoning model can spend it all thinking), or switch the server's reasoning off "
    "(see docs/endpoints.md, reasoning models)"
)
# The verdict's reply, and one more asked for with what was wrong with it.
VERDICT_ATTEMPTS = 2
# A speaker choice is one id, or a JSON object holding one.
SELECT_MAX_TOKENS = 32
# How much of the moderator's speaker-choice reply an event keeps.
SELECT_REPLY_CHARS = 200

Ctx = Runtime[DebateContext]


async def _moderator(runtime: Ctx, state: DebateState, kind: str, instruction: str) -> dict:
    """The moderator speaks the next turn, seeing everything so far; the state update."""
    ctx = runtime.context
    turn = await speak_turn(
        ctx, runtime.stream_writer, _moderator_turn(state, ctx, kind, instruction)
    )
    return {"count": 1, "tokens": spent(turn["tokens"])}


def _moderator_turn(
    state: DebateState, ctx: DebateContext, kind: str, instruction: str
) -> TurnSpec:
    return TurnSpec(
        ctx.moderator,
        index=state.get("count", 0),
        round_no=state.get("round", 0),
        kind=kind,
        visible=ctx.log.turns,
        instruction=instruction,
    )


def opening_turn(state: DebateState, ctx: DebateContext) -> TurnSpec:
    """The moderator's opening (a new run's is asked before the graph starts)."""
    instruction = prompts.opening_instruction(ctx.moderator, ctx.scenario)
    return _moderator_turn(state, ctx, "opening", instruction)


async def open_debate(state: DebateState, runtime: Ctx) -> dict:
    ctx = runtime.context
    turn = await speak_turn(ctx, runtime.stream_writer, opening_turn(state, ctx))
    update = {"count": 1, "tokens": spent(turn["tokens"]), "round": 0}
    return then_plan(state, update, ctx)


async def speak(task: SpeakTask, runtime: Ctx) -> dict:
    """One participant of a simultaneous round (``watch`` follows the whole round)."""
    return await _participant(task, runtime)


async def turn(state: DebateState, runtime: Ctx) -> dict:
    """The next participant speaks, the detectors watch, and the step plans what comes next:
    one step (and one checkpoint) a turn where a separate ``watch`` would take two."""
    spoken = await _participant(next_task(state), runtime)
    watched = await _watch(merged(state, spoken), runtime)
    return then_plan(state, merged(spoken, watched), runtime.context)


def _participant_turn(task: SpeakTask, ctx: DebateContext) -> TurnSpec:
    speaker = ctx.cast[task["speaker"]]
    return TurnSpec(
        speaker,
        index=task["index"],
        round_no=task["round"],
        kind="statement",
        visible=visible(ctx.log.turns, task["round"], ctx.protocol),
        instruction=prompts.turn_instruction(
            speaker, task["round"], ctx.rounds, ctx.scenario.motion
        ),
        model=task.get("model"),
    )


async def _participant(task: SpeakTask, runtime: Ctx) -> dict:
    ctx = runtime.context
    spec = _participant_turn(task, ctx)
    turn = await speak_turn(
        ctx, runtime.stream_writer, spec, stance=ctx.scenario.motion is not None
    )
    return {"count": 1, "tokens": spent(turn["tokens"]), "said": {spec.speaker.id: task["round"]}}


async def ask_next(state: DebateState, runtime: Ctx, goto: str) -> None:
    """Once a step has planned that ``goto`` comes next (``state`` is the state after it):
    for one participant's ``turn`` or the moderator's interjection (the steps whose one model
    call is known in full by then), send that turn's request now (``speaking.ask_ahead``) and
    return once it is on the wire; for any other step, nothing."""
    ctx = runtime.context
    if goto == "turn":
        spec = _participant_turn(next_task(state), ctx)
    elif goto == "interject":
        spec = _interjection_turn(state, ctx)
    elif goto == "select":
        prompt, request = _choice(state, ctx)
        await choose_ahead(ctx, runtime.stream_writer, state.get("count", 0), prompt, request)
        return
    elif goto == "close" and (verdict := _verdict_turn(state, ctx)) is not None:
        spec = verdict
    else:
        return
    await ask_ahead(ctx, runtime.stream_writer, spec)


def _choice(state: DebateState, ctx: DebateContext):
    """The moderator's speaker-choice prompt, and its model call given a writer."""
    candidates = [ctx.cast[pid] for pid in state["pending"]]
    instruction = prompts.selection_instruction(candidates)
    prompt = build_prompt(ctx, ctx.moderator, ctx.log.turns, instruction, SELECT_MAX_TOKENS)

    def request(writer):
        return call(
            ctx,
            writer,
            ctx.moderator,
            prompt,
            index=state.get("count", 0),
            max_tokens=SELECT_MAX_TOKENS,
            temperature=0.0,
            stream=False,
            schema=("speaker", speaker_schema([p.id for p in candidates])),
        )

    return prompt, request


async def select(state: DebateState, runtime: Ctx) -> dict:
    """The moderator's model picks the next speaker (a choice asked ahead is taken up);
    anything unusable falls back. The chosen speaker's turn is then asked ahead."""
    ctx = runtime.context
    candidates = [ctx.cast[pid] for pid in state["pending"]]
    chosen = take_choice(ctx, runtime.stream_writer, state.get("count", 0))
    if chosen is not None:
        prompt, reply = chosen.prompt, await chosen.reply
    else:
        prompt, request = _choice(state, ctx)
        reply = await request(runtime.stream_writer)
    choice = prompts.pick_speaker(reply.text, candidates)
    fallback = choice is None
    if fallback:
        choice = candidates[0].id  # round-robin order among those still to speak
    tokens = token_counts(reply, prompt)
    emit(
        ctx,
        runtime.stream_writer,
        "speaker_selected",
        round=state["round"],
        before_turn=state.get("count", 0),
        speaker=choice,
        fallback=fallback,
        reply=reply.text.strip()[:SELECT_REPLY_CHARS],
        tokens=tokens,
    )
    update = {"pending": [choice], "events": 1, "tokens": spent(tokens)}
    await ask_next(merged(state, update), runtime, "turn")
    return update


def _interjection_turn(state: DebateState, ctx: DebateContext) -> TurnSpec:
    instruction = prompts.interjection_instruction(ctx.moderator, state["round"])
    return _moderator_turn(state, ctx, "interjection", instruction)


async def interject(state: DebateState, runtime: Ctx) -> dict:
    ctx = runtime.context
    turn = await speak_turn(ctx, runtime.stream_writer, _interjection_turn(state, ctx))
    update = {"count": 1, "tokens": spent(turn["tokens"]), "interject": False}
    return then_plan(state, update, ctx)


async def watch(state: DebateState, runtime: Ctx) -> dict:
    """After a simultaneous round: run the loop detectors over the new turns and climb the
    ladder if one fires; then plan what comes next."""
    return then_plan(state, await _watch(state, runtime), runtime.context)


async def _watch(state: DebateState, runtime: Ctx) -> dict:
    ctx = runtime.context
    writer = runtime.stream_writer
    config = ctx.loops
    count = state.get("count", 0)
    update: dict[str, Any] = {"checked": count}
    empty = ctx.log.participant_turns[-EMPTY_STREAK:]
    if len(empty) == EMPTY_STREAK and all(t.get("failed") == "empty_reply" for t in empty):
        if empty[-1]["index"] >= state.get("checked", 0):
            emit(ctx, writer, "empty_replies", turns=[t["index"] for t in empty], hint=EMPTY_HINT)
            return {**update, "events": 1, "stop_reason": StopReason.empty_replies.value}
    if config.mode is LoopMode.off:
        return update
    said = ctx.log.said
    checked = state.get("checked", 0)
    detections: list[Detection] = []
    new = 0  # the turns not yet watched, newest last
    while new < len(said) and said[-1 - new]["index"] >= checked:
        new += 1
    for n in range(len(said) - new + 1, len(said) + 1):
        detections += detect(said if n == len(said) else said[:n], config)
    action = "none" if config.mode is LoopMode.warn else "ladder"
    for d in detections:
        emit(
            ctx,
            writer,
            "loop_detected",
            detector=d.detector,
            score=d.score,
            speakers=d.speakers,
            turns=d.turns,
            detail=d.detail,
            action=action,
        )
    events = len(detections)
    ladder = state.get("ladder", 0)
    if not detections:
        if resolved(ladder, count, state.get("last_detection", 0), config.reset_after):
            emit(ctx, writer, "loop_resolved", after=LADDER[ladder - 1])
            return {**update, "ladder": 0, "events": 1}
        return update
    update["last_detection"] = count
    if config.mode is LoopMode.warn:
        return {**update, "events": events}
    closure = next((d for d in detections if d.detector == "closure"), None)
    if closure is not None:  # nothing left to say: the moderator closes, no intervention
        emit(ctx, writer, "closure", speakers=closure.speakers, turns=closure.turns,
             detail=closure.detail)  # fmt: skip
        return {**update, "events": events + 1, "stop_reason": StopReason.closure.value}
    step = climb(
        detections,
        mode=config.mode,
        ladder=ladder,
        tried=state.get("tried", []),
        participants=ctx.participants,
        skipped=state.get("skipped", []),
        fallback_model=config.fallback_model,
    )
    update.update(ladder=step.rung + 1, tried=step.tried, events=events + 1)
    if step.action == "swap":
        swapped = {**state.get("swapped", {}), **dict.fromkeys(step.speakers, step.model)}
        emit(ctx, writer, "intervention", action="swap", speakers=step.speakers, model=step.model)
        return {**update, "swapped": swapped}
    if step.action == "skip":
        emit(ctx, writer, "intervention", action="skip", speakers=step.speakers)
        return {**update, "skipped": step.skipped}
    if step.action == "stop":
        emit(
            ctx,
            writer,
            "deadlock",
            detector=step.detector,
            speakers=step.speakers,
            since_turn=step.since,
            tried=step.tried[:-1],
            diagnosis=step.diagnosis(),
        )
        return {**update, "stop_reason": StopReason.deadlock.value}
    make = (
        prompts.loop_reframe_instruction
        if step.action == "reframe"
        else prompts.loop_abstract_instruction
    )
    emit(ctx, writer, "intervention", action=step.action, speakers=step.speakers)
    skipped = state.get("skipped", [])
    names = [ctx.cast[p].name for p in ctx.participants if p not in skipped]
    spoken = await _moderator(
        runtime, state, "intervention", make(ctx.moderator, step.pattern, names)
    )
    return {**update, **spoken, "checked": count + 1}


def _verdict_turn(state: DebateState, ctx: DebateContext) -> TurnSpec | None:
    """The moderator's verdict, seeing every turn; None when the token budget has no room."""
    turns = list(ctx.log.turns)  # before the verdict
    budget_left = ctx.token_budget - state.get("tokens", 0)
    if transcript_tokens(turns) + verdict_tokens(ctx) > budget_left:
        return None
    return TurnSpec(
        ctx.moderator,
        index=state.get("count", 0),
        round_no=state.get("round", 0),
        kind="verdict",
        visible=turns,
        instruction=prompts.verdict_instruction(ctx.scenario, ctx.cast),
        max_tokens=verdict_tokens(ctx),
        stream=False,  # JSON is not worth watching; the CLI shows the parsed verdict
        schema=("verdict", verdict_schema(list(ctx.participants))),
    )


async def close(state: DebateState, runtime: Ctx) -> dict:
    """The moderator's verdict: validated, retried once, else archived as plain text."""
    ctx = runtime.context
    writer = runtime.stream_writer
    moderator = ctx.moderator
    participants = [ctx.cast[pid] for pid in ctx.participants]
    spec = _verdict_turn(state, ctx)
    if spec is None:
        emit(ctx, writer, "verdict_skipped", reason="token budget exhausted")
        return {"events": 1, "verdict": None}
    turns, instruction, schema = spec.visible, spec.instruction, spec.schema
    index, cap = spec.index, spec.max_tokens or verdict_tokens(ctx)
    ctx.log.catch_up()  # while the verdict (asked ahead) is being written
    first = await speak_turn(ctx, writer, spec)
    used = {"count": 1, "tokens": spent(first["tokens"])}
    last: dict[str, Any] = {}

    async def attempt(n: int) -> dict:
        """The first reply read, or (once) the verdict asked for again with what was wrong."""
        if n == 1:
            try:
                verdict = parse_verdict(first["text"], participants)
            except ValueError as exc:
                last["error"] = str(exc)
                raise Unusable(str(exc)) from None
            return {**used, "verdict": {"valid": True, **verdict.model_dump()}}
        emit(ctx, writer, "verdict_retry", turn=index, reason=last["error"])
        # Room for the new reply and for what is added after the transcript: the first reply,
        # shown back, and the request to try again.
        retry = prompts.verdict_retry_instruction(last["error"], instruction)
        added = estimate_tokens(len(first["text"]) + len(retry))
        prompt = build_prompt(ctx, moderator, turns, instruction, cap + added)
        prompt.messages.append({"role": "assistant", "content": first["text"] or "(empty)"})
        prompt.messages.append({"role": "user", "content": retry})
        started = time.perf_counter()
        reply = await call(
            ctx, writer, moderator, prompt, index=index, max_tokens=cap, stream=False,
            schema=schema,
        )  # fmt: skip
        tokens = token_counts(reply, prompt)
        last.update(reply=reply, tokens=tokens)
        last["charged"] = {"count": 1, "events": 2, "tokens": used["tokens"] + spent(tokens)}
        try:
            verdict = parse_verdict(reply.text, participants)
        except ValueError as exc:
            last["error"] = str(exc)
            raise Unusable(str(exc)) from None
        emit(ctx, writer, "verdict_retry_ok", turn=index, tokens=tokens,
             latency=round(time.perf_counter() - started, 3), text=reply.text.strip())  # fmt: skip
        verdict_state = {"valid": True, "retried": True, **verdict.model_dump()}
        return {**last["charged"], "verdict": verdict_state}

    try:
        return await until_usable(attempt, VERDICT_ATTEMPTS)
    except Unusable:
        reply = last["reply"]
        emit(ctx, writer, "verdict_malformed", turn=index, reason=last["error"],
             tokens=last["tokens"], text=reply.text.strip())  # fmt: skip
        text = reply.text.strip() or first["text"]
        verdict_state = {"valid": False, "error": last["error"], "text": text}
        return {**last["charged"], "verdict": verdict_state}
