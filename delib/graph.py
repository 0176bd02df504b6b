"""The debate as a LangGraph ``StateGraph``: open, plan, (select), speak, interject, close.

::

    START → open → plan ─┬─► speak ×1 (round_robin)        ─► plan
                         ├─► speak ×N in parallel (simultaneous) ─► plan
                         ├─► select → speak ×1 (moderator_selects) ─► plan
                         ├─► interject (between rounds)     ─► plan
                         └─► close → END

Routing reads only counters in the state (round, who has spoken, tokens used); nothing a
persona writes can end or redirect the debate. Model calls happen only in nodes, through
``endpoints.EndpointClient``; every finished turn and event is also sent on the custom stream
(``get_stream_writer``) the moment it exists, so the archive keeps it even if a later call fails.
"""

from __future__ import annotations

import dataclasses
import operator
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from delib import prompts
from delib.config import SpeakerSettings
from delib.endpoints import Clients, Prompt, Reply
from delib.loops import Detection, LoopConfig, LoopMode, detect
from delib.personas import Persona
from delib.refusal import classify
from delib.scenarios import Protocol, Scenario
from delib.verdict import parse_verdict

# Rough size of a token in characters, for budget estimates when a server reports no usage.
CHARS_PER_TOKEN = 4
# Share of the token budget kept back so the moderator can still close with a verdict.
VERDICT_RESERVE = 0.15
# The verdict is longer than a turn: at least this many tokens.
VERDICT_MIN_TOKENS = 800
# A speaker choice is one id.
SELECT_MAX_TOKENS = 16
# Default budget when neither the scenario nor a flag sets one.
DEFAULT_TOKEN_BUDGET = 200_000
# Tokens of a context kept free for the chat template's markup around the messages.
CONTEXT_MARGIN = 64
# However full the context, a reply gets at least this many tokens.
MIN_REPLY_TOKENS = 16


class StopReason(StrEnum):
    """Why a run ended."""

    completed = "completed"  # every planned round ran; the moderator closed
    max_rounds = "max_rounds"  # the scenario's round ceiling cut the planned rounds short
    token_budget = "token_budget"  # the next turn would not fit in the token budget
    deadlock = "deadlock"  # the loop detector gave up breaking a loop
    error = "error"  # a model call failed for good (the error is recorded)
    interrupted = "interrupted"  # Ctrl-C or SIGTERM


class DebateState(TypedDict, total=False):
    """Plain, JSON-serialisable state; list fields accumulate through ``operator.add``."""

    turns: Annotated[list[dict], operator.add]
    events: Annotated[list[dict], operator.add]
    round: int
    pending: list[str]
    interject: bool
    stop_reason: str | None
    verdict: dict | None
    # loop handling (see watch)
    checked: int  # turns already run through the detectors
    ladder: int  # rungs of the intervention ladder climbed since the last reset
    last_detection: int  # number of turns when a loop was last detected
    skipped: list[str]  # participants left out after the ladder's third rung
    tried: list[str]  # what the ladder has tried, for the diagnosis
    swapped: dict[str, str]  # participants moved to the fallback model by the ladder


@dataclass
class DebateSetup:
    """Everything fixed for one run; kept out of the state so checkpoints stay plain data."""

    scenario: Scenario
    cast: dict[str, Persona]  # moderator and participants by id
    speakers: dict[str, SpeakerSettings]  # resolved, with a concrete model
    clients: Clients
    protocol: Protocol
    rounds: int
    max_rounds: int | None
    token_budget: int
    seed: int | None = None
    stream: bool = True
    loops: LoopConfig = LoopConfig()
    prompt_layout: str | None = None  # None: each endpoint's own (Endpoint.layout)

    @property
    def participants(self) -> list[str]:
        return list(self.scenario.participants)

    @property
    def moderator(self) -> Persona:
        return self.cast[self.scenario.moderator]

    def recursion_limit(self) -> int:
        """Supersteps a run can need: per round plan+select+speak+watch per speaker, and an
        interjection."""
        rounds = min(self.rounds, self.max_rounds or self.rounds)
        return rounds * (4 * len(self.participants) + 2) + 10


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _tokens(reply: Reply, prompt: Prompt) -> dict[str, Any]:
    if reply.usage_reported:
        return {
            "prompt": reply.prompt_tokens or 0,
            "completion": reply.completion_tokens or 0,
            "estimated": False,
        }
    return {
        "prompt": prompt.chars() // CHARS_PER_TOKEN,
        "completion": len(reply.text) // CHARS_PER_TOKEN,
        "estimated": True,
    }


def tokens_used(state: DebateState) -> int:
    total = 0
    for record in [*state.get("turns", []), *state.get("events", [])]:
        tokens = record.get("tokens")
        if tokens:
            total += tokens["prompt"] + tokens["completion"]
    return total


def _transcript_tokens(turns: list[dict]) -> int:
    return sum(len(t["text"]) for t in turns) // CHARS_PER_TOKEN + 600


# The intervention ladder, one rung per detection while a loop lasts.
LADDER = ("reframe", "abstract", "skip", "stop")


class Debate:
    """Builds the graph for one run; nodes are methods so they can reach the setup."""

    def __init__(self, setup: DebateSetup, recovered: dict[int, dict] | None = None) -> None:
        self.setup = setup
        # Turns a killed run finished after its last checkpoint (see Run.resume): when the
        # resumed graph comes to speak one of them again, the finished turn is used as it is.
        self.recovered: dict[int, dict] = recovered or {}

    # --- helpers ---------------------------------------------------------------------------
    def _prompt(
        self, speaker: Persona, turns: list[dict], instruction: str, reply_tokens: int
    ) -> Prompt:
        """The speaker's prompt, trimmed to its endpoint's context if that is known."""
        setup = self.setup
        endpoint = setup.speakers[speaker.id].endpoint
        context = endpoint.config.context_tokens
        limit = None
        if context:
            # Keep room for the reply plus a margin for the chat template's own tokens.
            limit = max(context - reply_tokens - CONTEXT_MARGIN, 0)
        layout = setup.prompt_layout or endpoint.layout()
        return prompts.build(speaker, setup.scenario, setup.cast, turns, instruction, limit, layout)

    async def _call(
        self,
        speaker: Persona,
        prompt: Prompt,
        *,
        index: int,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stream: bool | None = None,
        model: str | None = None,
    ) -> Reply:
        settings = self.setup.speakers[speaker.id]
        client = self.setup.clients.get(settings.endpoint)
        writer = get_stream_writer()
        streaming = self.setup.stream if stream is None else stream

        def on_token(text: str) -> None:
            writer({"kind": "token", "index": index, "speaker": speaker.id, "text": text})

        def on_retry(attempt: int, error: str) -> None:
            writer(
                {
                    "kind": "retry",
                    "index": index,
                    "speaker": speaker.id,
                    "attempt": attempt,
                    "error": error,
                }
            )

        assert settings.model is not None
        model = model or settings.model
        max_tokens = max_tokens or settings.max_tokens
        context = settings.endpoint.config.context_tokens
        if context:
            # A prompt that could not be trimmed enough leaves the reply less room.
            room = context - -(-prompt.chars() // prompts.FIT_CHARS_PER_TOKEN) - CONTEXT_MARGIN
            max_tokens = max(min(max_tokens, room), MIN_REPLY_TOKENS)
        return await client.complete(
            prompt,
            model=model,
            temperature=settings.temperature if temperature is None else temperature,
            max_tokens=max_tokens,
            seed=self.setup.seed,
            stream=streaming,
            on_token=on_token if streaming else None,
            on_retry=on_retry,
        )

    async def _turn(
        self,
        speaker: Persona,
        *,
        index: int,
        round_no: int,
        kind: str,
        visible: list[dict],
        instruction: str,
        max_tokens: int | None = None,
        stream: bool | None = None,
        model: str | None = None,
    ) -> dict:
        """Speak one turn and announce it on the stream; returns the archived turn record."""
        setup = self.setup
        role = "moderator" if speaker.id == setup.scenario.moderator else "participant"
        writer = get_stream_writer()
        start = {
            "kind": "turn_start",
            "index": index,
            "speaker": speaker.id,
            "name": speaker.name,
            "round": round_no,
            "role": role,
            "turn_kind": kind,
        }
        done = self.recovered.pop(index, None)
        if done is not None and done["speaker"] == speaker.id and done["kind"] == kind:
            writer({**start, "recovered": True})
            writer({"kind": "turn", "turn": done, "recovered": True})
            return done
        writer(start)
        settings = setup.speakers[speaker.id]
        reply_tokens = max_tokens or settings.max_tokens
        prompt = self._prompt(speaker, visible, instruction, reply_tokens)
        started_at = now()
        reply = await self._call(
            speaker, prompt, index=index, max_tokens=max_tokens, stream=stream, model=model
        )
        turn = {
            "type": "turn",
            "index": index,
            "round": round_no,
            "speaker": speaker.id,
            "name": speaker.name,
            "role": role,
            "kind": kind,
            "text": reply.text.strip(),
            "refusal": dataclasses.asdict(classify(reply.text)),
            "model": reply.model,
            "endpoint": settings.endpoint.name,
            "tokens": _tokens(reply, prompt),
            "latency": round(reply.latency, 3),
            "finish_reason": reply.finish_reason,
            "started_at": started_at,
        }
        if reply.timings:
            turn["timings"] = reply.timings
        if prompt.omitted:
            turn["omitted_turns"] = prompt.omitted
            # What the rolling summary costs in this prompt (estimated tokens).
            turn["summary_tokens"] = prompt.summary_chars // CHARS_PER_TOKEN
        writer({"kind": "turn", "turn": turn})
        return turn

    def _event(self, name: str, **fields: Any) -> dict:
        event = {"type": "event", "event": name, "at": now(), **fields}
        get_stream_writer()({"kind": "event", "event": event})
        return event

    # --- nodes -----------------------------------------------------------------------------
    async def open(self, state: DebateState) -> dict:
        moderator = self.setup.moderator
        turn = await self._turn(
            moderator,
            index=0,
            round_no=0,
            kind="opening",
            visible=[],
            instruction=prompts.opening_instruction(moderator, self.setup.scenario),
        )
        return {"turns": [turn], "round": 0}

    def plan(self, state: DebateState) -> dict:
        """Decide what happens next from counters alone."""
        setup = self.setup
        round_no = state.get("round", 0)
        turns = state.get("turns", [])
        spoken = {
            t["speaker"] for t in turns if t["round"] == round_no and t["role"] == "participant"
        }
        skipped = set(state.get("skipped", []))
        active = [p for p in setup.participants if p not in skipped]
        remaining = [p for p in active if p not in spoken] if round_no else []
        interject = False
        if not remaining:
            if round_no >= setup.rounds:
                return {"stop_reason": StopReason.completed.value, "pending": []}
            if setup.max_rounds is not None and round_no >= setup.max_rounds:
                return {"stop_reason": StopReason.max_rounds.value, "pending": []}
            round_no += 1
            remaining = active
            interject = round_no > 1 and setup.scenario.interjections
        next_count = len(remaining) if setup.protocol is Protocol.simultaneous else 1
        max_tokens = max(setup.speakers[p].max_tokens for p in remaining)
        per_turn = _transcript_tokens(turns) + max_tokens
        reserve = _transcript_tokens(turns) + self._verdict_tokens()
        used = tokens_used(state)
        if used + per_turn * next_count + reserve > setup.token_budget:
            return {"stop_reason": StopReason.token_budget.value, "pending": []}
        return {"round": round_no, "pending": remaining, "interject": interject}

    def route(self, state: DebateState) -> Any:
        if state.get("stop_reason"):
            return "close"
        if state.get("interject"):
            return "interject"
        pending = state["pending"]
        if self.setup.protocol is Protocol.simultaneous:
            return [self._send(state, pid, offset) for offset, pid in enumerate(pending)]
        if self.setup.protocol is Protocol.moderator_selects and len(pending) > 1:
            return "select"
        return self._send(state, pending[0], 0)

    def _send(self, state: DebateState, pid: str, offset: int) -> Send:
        turns = state.get("turns", [])
        round_no = state["round"]
        if self.setup.protocol is Protocol.simultaneous:
            # Each answers the round independently: earlier rounds and the moderator only.
            visible = [t for t in turns if t["round"] < round_no or t["role"] == "moderator"]
        else:
            visible = turns
        payload = {
            "speaker": pid,
            "index": len(turns) + offset,
            "round": round_no,
            "visible": visible,
            "model": state.get("swapped", {}).get(pid),
        }
        return Send("speak", payload)

    async def speak(self, payload: dict) -> dict:
        setup = self.setup
        speaker = setup.cast[payload["speaker"]]
        turn = await self._turn(
            speaker,
            index=payload["index"],
            round_no=payload["round"],
            kind="statement",
            visible=payload["visible"],
            instruction=prompts.turn_instruction(speaker, payload["round"], setup.rounds),
            model=payload.get("model"),
        )
        return {"turns": [turn]}

    async def watch(self, state: DebateState) -> dict:
        """Run the loop detectors over the new turns and climb the ladder if one fires."""
        config = self.setup.loops
        turns = state.get("turns", [])
        update: dict[str, Any] = {"checked": len(turns)}
        if config.mode is LoopMode.off:
            return update
        said = [t for t in turns if t["role"] == "participant"]
        checked = state.get("checked", 0)
        detections: list[Detection] = []
        for n, turn in enumerate(said, start=1):
            if turn["index"] >= checked:
                detections += detect(said[:n], config)
        events: list[dict] = []
        for d in detections:
            events.append(
                self._event(
                    "loop_detected",
                    detector=d.detector,
                    score=d.score,
                    speakers=d.speakers,
                    turns=d.turns,
                    detail=d.detail,
                    action="none" if config.mode is LoopMode.warn else "ladder",
                )
            )
        ladder = state.get("ladder", 0)
        if not detections:
            if ladder and len(turns) - state.get("last_detection", 0) >= config.reset_after:
                events.append(self._event("loop_resolved", after=LADDER[ladder - 1]))
                update["ladder"] = 0
            return {**update, "events": events}
        update["last_detection"] = len(turns)
        if config.mode is LoopMode.warn:
            return {**update, "events": events}
        rung = len(LADDER) - 1 if config.mode is LoopMode.stop else min(ladder, len(LADDER) - 1)
        return await self._climb(state, detections, rung, {**update, "events": events})

    async def _climb(
        self, state: DebateState, detections: list[Detection], rung: int, update: dict
    ) -> dict:
        setup = self.setup
        moderator = setup.moderator
        turns = state.get("turns", [])
        lead = max(detections, key=lambda d: d.score)
        stuck = sorted({s for d in detections for s in d.speakers})
        pattern = "; ".join(f"{d.detector.replace('_', ' ')} ({d.detail})" for d in detections)
        skipped = state.get("skipped", [])
        names = [setup.cast[p].name for p in setup.participants if p not in skipped]
        action = LADDER[rung]
        tried = [*state.get("tried", []), action]
        update.update(ladder=rung + 1, tried=tried)
        if action == "skip":
            fallback = setup.loops.fallback_model
            movable = [p for p in stuck if p in setup.participants]
            if fallback:
                update["swapped"] = {**state.get("swapped", {}), **dict.fromkeys(movable, fallback)}
                update["events"].append(
                    self._event("intervention", action="swap", speakers=movable, model=fallback)
                )
                return update
            skipped = sorted({*skipped, *movable})
            if set(setup.participants) <= set(skipped):
                action = "stop"  # skipping everyone would leave nobody to speak
            else:
                update["skipped"] = skipped
                update["events"].append(
                    self._event("intervention", action="skip", speakers=movable)
                )
                return update
        if action == "stop":
            update["events"].append(
                self._event(
                    "deadlock",
                    detector=lead.detector,
                    speakers=stuck,
                    since_turn=min(d.since for d in detections),
                    tried=tried[:-1],
                    diagnosis=f"{pattern}; tried: {', '.join(tried[:-1]) or 'nothing'}",
                )
            )
            update["stop_reason"] = StopReason.deadlock.value
            return update
        make = (
            prompts.loop_reframe_instruction
            if action == "reframe"
            else prompts.loop_abstract_instruction
        )
        update["events"].append(self._event("intervention", action=action, speakers=stuck))
        turn = await self._turn(
            moderator,
            index=len(turns),
            round_no=state.get("round", 0),
            kind="intervention",
            visible=turns,
            instruction=make(moderator, pattern, names),
        )
        update["turns"] = [turn]
        update["checked"] = len(turns) + 1
        return update

    def after_watch(self, state: DebateState) -> str:
        return END if state.get("stop_reason") == StopReason.deadlock.value else "plan"

    async def interject(self, state: DebateState) -> dict:
        moderator = self.setup.moderator
        turns = state.get("turns", [])
        turn = await self._turn(
            moderator,
            index=len(turns),
            round_no=state["round"],
            kind="interjection",
            visible=turns,
            instruction=prompts.interjection_instruction(moderator, state["round"]),
        )
        return {"turns": [turn], "interject": False}

    async def select(self, state: DebateState) -> dict:
        """The moderator's model picks the next speaker; anything unusable falls back."""
        setup = self.setup
        moderator = setup.moderator
        candidates = [setup.cast[pid] for pid in state["pending"]]
        turns = state.get("turns", [])
        prompt = self._prompt(
            moderator, turns, prompts.selection_instruction(candidates), SELECT_MAX_TOKENS
        )
        reply = await self._call(
            moderator,
            prompt,
            index=len(turns),
            max_tokens=SELECT_MAX_TOKENS,
            temperature=0.0,
            stream=False,
        )
        choice = prompts.pick_speaker(reply.text, candidates)
        fallback = choice is None
        if fallback:
            choice = candidates[0].id  # round-robin order among those still to speak
        event = self._event(
            "speaker_selected",
            round=state["round"],
            before_turn=len(turns),
            speaker=choice,
            fallback=fallback,
            reply=reply.text.strip()[:200],
            tokens=_tokens(reply, prompt),
        )
        return {"pending": [choice], "events": [event]}

    def _verdict_tokens(self) -> int:
        setup = self.setup
        if setup.scenario.limits.verdict_tokens:
            return setup.scenario.limits.verdict_tokens
        settings = setup.speakers[setup.moderator.id]
        tokens = max(VERDICT_MIN_TOKENS, 2 * settings.max_tokens)
        context = settings.endpoint.config.context_tokens
        return min(tokens, context // 2) if context else tokens

    async def close(self, state: DebateState) -> dict:
        """The moderator's verdict: validated, retried once, else archived as plain text."""
        setup = self.setup
        moderator = setup.moderator
        turns = state.get("turns", [])
        participants = [setup.cast[pid] for pid in setup.participants]
        budget_left = setup.token_budget - tokens_used(state)
        if _transcript_tokens(turns) + self._verdict_tokens() > budget_left:
            event = self._event("verdict_skipped", reason="token budget exhausted")
            return {"events": [event], "verdict": None}
        instruction = prompts.verdict_instruction(setup.scenario, setup.cast)
        index = len(turns)
        first = await self._turn(
            moderator,
            index=index,
            round_no=state.get("round", 0),
            kind="verdict",
            visible=turns,
            instruction=instruction,
            max_tokens=self._verdict_tokens(),
            stream=False,  # JSON is not worth watching; the CLI shows the parsed verdict
        )
        new_turns = [first]
        events: list[dict] = []
        try:
            verdict = parse_verdict(first["text"], participants)
            return {"turns": new_turns, "verdict": {"valid": True, **verdict.model_dump()}}
        except ValueError as exc:
            first_error = str(exc)
        events.append(self._event("verdict_retry", turn=index, reason=first_error))
        # Room for the new reply and for what is added after the transcript: the first reply,
        # shown back, and the request to try again.
        retry = prompts.verdict_retry_instruction(first_error, instruction)
        added = len(first["text"]) + len(retry)
        reserve = self._verdict_tokens() + added // prompts.FIT_CHARS_PER_TOKEN + 1
        prompt = self._prompt(moderator, turns, instruction, reserve)
        prompt.messages.append({"role": "assistant", "content": first["text"] or "(empty)"})
        prompt.messages.append({"role": "user", "content": retry})
        started = time.perf_counter()
        reply = await self._call(
            moderator, prompt, index=index, max_tokens=self._verdict_tokens(), stream=False
        )
        try:
            verdict = parse_verdict(reply.text, participants)
            record = {"valid": True, "retried": True, **verdict.model_dump()}
            events.append(
                self._event(
                    "verdict_retry_ok",
                    turn=index,
                    tokens=_tokens(reply, prompt),
                    latency=round(time.perf_counter() - started, 3),
                    text=reply.text.strip(),
                )
            )
            return {"turns": new_turns, "events": events, "verdict": record}
        except ValueError as exc:
            events.append(
                self._event(
                    "verdict_malformed",
                    turn=index,
                    reason=str(exc),
                    tokens=_tokens(reply, prompt),
                    text=reply.text.strip(),
                )
            )
            record = {
                "valid": False,
                "error": str(exc),
                "text": reply.text.strip() or first["text"],
            }
            return {"turns": new_turns, "events": events, "verdict": record}

    # --- assembly ----------------------------------------------------------------------------
    def build(self) -> StateGraph:
        graph = StateGraph(DebateState)
        graph.add_node("open", self.open)
        graph.add_node("plan", self.plan)
        graph.add_node("speak", self.speak)
        graph.add_node("select", self.select)
        graph.add_node("interject", self.interject)
        graph.add_node("watch", self.watch)
        graph.add_node("close", self.close)
        graph.add_edge(START, "open")
        graph.add_edge("open", "plan")
        graph.add_conditional_edges("plan", self.route, ["speak", "select", "interject", "close"])
        graph.add_conditional_edges(
            "select", lambda state: self._send(state, state["pending"][0], 0), ["speak"]
        )
        graph.add_edge("speak", "watch")
        graph.add_conditional_edges("watch", self.after_watch, ["plan", END])
        graph.add_edge("interject", "plan")
        graph.add_edge("close", END)
        return graph

    def compile(self, checkpointer: Any = None):
        return self.build().compile(checkpointer=checkpointer)
