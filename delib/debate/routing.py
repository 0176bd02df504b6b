"""Who speaks next and whether the run goes on: pure functions of the state's counters.

Nothing a persona writes can end or redirect the debate: these functions read the round, who
has spoken in it, who was skipped and the tokens used, never the text of a turn. They need no
server and no graph (see tests/test_routing.py).
"""

from __future__ import annotations

from langgraph.types import Send

from delib.debate.state import (
    REDUCERS,
    DebateContext,
    DebateState,
    RunLog,
    SpeakTask,
    StopReason,
)
from delib.library.scenarios import Protocol
from delib.records import Turn, estimate_tokens

# The verdict is longer than a turn: at least this many tokens.
VERDICT_MIN_TOKENS = 800
# Tokens of a context kept free for the chat template's markup around the messages.
CONTEXT_MARGIN = 64
# However full the context, a reply gets at least this many tokens.
MIN_REPLY_TOKENS = 16
# Characters of the prompt around the transcript (rules, brief, persona, instruction), for the
# budget check before a turn: a typical persona and scenario come to about this much.
PROMPT_FRAME_CHARS = 1800


def transcript_tokens(turns: list[Turn]) -> int:
    """Estimated prompt tokens of a turn that shows these turns."""
    return estimate_tokens(sum(len(t["text"]) for t in turns) + PROMPT_FRAME_CHARS)


def log_tokens(log: RunLog) -> int:
    """``transcript_tokens`` of every turn of a run's log, from its running count."""
    return estimate_tokens(log.chars + PROMPT_FRAME_CHARS)


def verdict_tokens(ctx: DebateContext) -> int:
    """The verdict's reply cap: the scenario's, else the moderator's endpoint's, else twice a
    turn (at least 800), within half the moderator's context."""
    if ctx.scenario.limits.verdict_tokens:
        return ctx.scenario.limits.verdict_tokens
    settings = ctx.speakers[ctx.moderator.id]
    tokens = settings.endpoint.config.verdict_tokens or max(
        VERDICT_MIN_TOKENS, 2 * settings.max_tokens
    )
    context = settings.endpoint.config.context_tokens
    return min(tokens, context // 2) if context else tokens


def fits_budget(
    used: int, prompt_tokens: int, reply_tokens: int, calls: int, reserve: int, budget: int
) -> bool:
    """Whether ``calls`` more turns of this size, plus what the verdict needs, stay within the
    budget."""
    return used + (prompt_tokens + reply_tokens) * calls + reserve <= budget


def reply_cap(max_tokens: int, prompt_chars: int, context: int | None) -> int:
    """A reply's ``max_tokens``: the persona's cap, cut to the room its context leaves."""
    if not context:
        return max_tokens
    room = context - estimate_tokens(prompt_chars) - CONTEXT_MARGIN
    return max(min(max_tokens, room), MIN_REPLY_TOKENS)


def prompt_limit(context: int | None, reply_tokens: int) -> int | None:
    """The most prompt tokens that leave room for the reply and the template's markup."""
    if not context:
        return None
    return max(context - reply_tokens - CONTEXT_MARGIN, 0)


def plan(state: DebateState, ctx: DebateContext) -> dict:
    """Decide what happens next from counters alone: stop, interject, or who speaks how."""
    round_no = state.get("round", 0)
    said = state.get("said", {})
    skipped = set(state.get("skipped", []))
    active = [p for p in ctx.participants if p not in skipped]
    remaining = [p for p in active if said.get(p) != round_no] if round_no else []
    interject = False
    if not remaining:
        if round_no >= ctx.rounds:
            return {"stop_reason": StopReason.completed.value, "pending": []}
        if ctx.max_rounds is not None and round_no >= ctx.max_rounds:
            return {"stop_reason": StopReason.max_rounds.value, "pending": []}
        round_no += 1
        remaining = active
        interject = round_no > 1 and ctx.scenario.interjections
    if ctx.protocol is Protocol.simultaneous:
        step, calls = "all", len(remaining)
    elif ctx.protocol is Protocol.moderator_selects and len(remaining) > 1:
        step, calls = "select", 1
    else:
        step, calls = "one", 1
    prompt = log_tokens(ctx.log)
    reply = max(ctx.speakers[p].max_tokens for p in remaining)
    reserve = prompt + verdict_tokens(ctx)
    if not fits_budget(state.get("tokens", 0), prompt, reply, calls, reserve, ctx.token_budget):
        return {"stop_reason": StopReason.token_budget.value, "pending": []}
    return {"round": round_no, "pending": remaining, "interject": interject, "step": step}


def merged(state: DebateState, update: dict) -> DebateState:
    """The state after ``update``, as LangGraph's reducers (``DebateState``'s) will make it."""
    result: dict = {**state, **update}
    for key, reduce in REDUCERS.items():
        if key in update and key in state:
            result[key] = reduce(state[key], update[key])
    return result  # type: ignore[return-value]


def then_plan(state: DebateState, update: dict, ctx: DebateContext) -> dict:
    """A node's update followed by the plan for what comes next (one step, not two)."""
    if update.get("stop_reason"):
        return update
    return {**update, **plan(merged(state, update), ctx)}


def speak_task(state: DebateState, pid: str, offset: int = 0) -> SpeakTask:
    """What one participant's turn needs: who, at which index and round, on which model."""
    return {
        "speaker": pid,
        "index": state.get("count", 0) + offset,
        "round": state["round"],
        "model": state.get("swapped", {}).get(pid),
    }


def next_task(state: DebateState) -> SpeakTask:
    """The one participant due next (round robin, or the moderator's choice)."""
    return speak_task(state, state["pending"][0])


def route(state: DebateState) -> str | list[Send]:
    """After a step that planned: the end (deadlock), the verdict, an interjection, or the
    speakers: one participant's ``turn`` (spoken and watched in one step), the moderator's
    choice first, or a ``speak`` per participant at once."""
    if state.get("stop_reason") in (StopReason.deadlock.value, StopReason.empty_replies.value):
        return "end"
    if state.get("stop_reason"):
        return "close"
    if state.get("interject"):
        return "interject"
    pending = state["pending"]
    step = state.get("step", "one")
    if step == "all":
        return [Send("speak", speak_task(state, pid, n)) for n, pid in enumerate(pending)]
    if step == "select":
        return "select"
    return "turn"


def visible(turns: list[Turn], round_no: int, protocol: Protocol) -> list[Turn]:
    """What a speaker in this round sees: everything so far, or in a simultaneous round only
    earlier rounds and the moderator (each answers the round independently)."""
    if protocol is Protocol.simultaneous:
        return [t for t in turns if t["round"] < round_no or t["role"] == "moderator"]
    return list(turns)
