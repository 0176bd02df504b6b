"""Routing, budget arithmetic and the intervention ladder, as pure functions: no server."""

from __future__ import annotations

from langgraph.types import Send

from delib.debate.ladder import LADDER, climb, resolved
from delib.debate.routing import (
    CONTEXT_MARGIN,
    MIN_REPLY_TOKENS,
    VERDICT_MIN_TOKENS,
    fits_budget,
    merged,
    next_task,
    plan,
    prompt_limit,
    reply_cap,
    route,
    then_plan,
    transcript_tokens,
    verdict_tokens,
    visible,
)
from delib.debate.state import DebateContext, MemoryLog
from delib.detect.loops import Detection, LoopMode
from delib.library.personas import Persona
from delib.library.scenarios import Limits, Protocol, Scenario
from delib.models.config import Endpoint, EndpointConfig, SpeakerSettings
from delib.models.endpoints import Clients
from delib.records import estimate_tokens

PANEL = ["a", "b", "c"]


def context(
    protocol=Protocol.round_robin,
    rounds=2,
    budget=200_000,
    context_tokens=None,
    max_tokens=100,
    interjections=True,
    max_rounds=None,
    verdict=None,
    turns=None,
):
    cast = {pid: Persona(id=pid, name=pid.upper(), role="r", prompt="p") for pid in ["m", *PANEL]}
    endpoint = Endpoint(
        "e", EndpointConfig(base_url="http://x/v1", context_tokens=context_tokens), "k"
    )
    speakers = {pid: SpeakerSettings(endpoint, "model", 0.7, max_tokens) for pid in cast}
    scenario = Scenario(
        id="s",
        title="t",
        question="q?",
        source_seed="seed",
        moderator="m",
        participants=PANEL,
        interjections=interjections,
        limits=Limits(max_rounds=max_rounds, verdict_tokens=verdict),
    )
    return DebateContext(
        scenario=scenario,
        cast=cast,
        speakers=speakers,
        clients=Clients(),
        protocol=protocol,
        rounds=rounds,
        max_rounds=max_rounds,
        token_budget=budget,
        log=MemoryLog(turns or []),
    )


def turn(index, speaker, round_no, text="x" * 30, role="participant"):
    return {
        "type": "turn",
        "index": index,
        "speaker": speaker,
        "round": round_no,
        "role": role,
        "text": text,
        "kind": "statement",
    }


def test_the_opening_leads_into_round_one_with_everyone_pending():
    step = plan({"round": 0, "count": 1}, context())
    assert step == {"round": 1, "pending": PANEL, "interject": False, "step": "one"}


def test_round_robin_goes_in_listed_order_and_skips_who_has_spoken():
    state = {"round": 1, "count": 2, "said": {"a": 1}}
    assert plan(state, context())["pending"] == ["b", "c"]
    planned = {**state, **plan(state, context())}
    assert route(planned) == "turn"
    assert next_task(planned)["speaker"] == "b" and next_task(planned)["index"] == 2


def test_a_new_round_starts_with_an_interjection_unless_the_scenario_says_no():
    done = {"round": 1, "count": 5, "said": dict.fromkeys(PANEL, 1)}
    assert plan(done, context())["interject"] is True
    assert plan(done, context(interjections=False))["interject"] is False
    assert route({**done, **plan(done, context())}) == "interject"


def test_the_last_round_ends_completed_and_a_ceiling_ends_max_rounds():
    done = {"round": 2, "count": 9, "said": dict.fromkeys(PANEL, 2)}
    assert plan(done, context(rounds=2))["stop_reason"] == "completed"
    done1 = {"round": 1, "count": 5, "said": dict.fromkeys(PANEL, 1)}
    assert plan(done1, context(rounds=3, max_rounds=1))["stop_reason"] == "max_rounds"
    assert route({"stop_reason": "completed"}) == "close"


def test_simultaneous_sends_everyone_at_once_with_consecutive_indices():
    state = {"round": 0, "count": 1}
    state = {**state, **plan(state, context(Protocol.simultaneous))}
    sends = route(state)
    assert all(isinstance(s, Send) and s.node == "speak" for s in sends)
    assert [s.arg["speaker"] for s in sends] == PANEL
    assert [s.arg["index"] for s in sends] == [1, 2, 3]


def test_moderator_selects_asks_the_moderator_until_one_is_left():
    ctx = context(Protocol.moderator_selects)
    state = {"round": 1, "count": 2, "said": {"a": 1}}
    assert route({**state, **plan(state, ctx)}) == "select"
    last = {"round": 1, "count": 3, "said": {"a": 1, "b": 1}}
    last_planned = {**last, **plan(last, ctx)}
    assert route(last_planned) == "turn" and next_task(last_planned)["speaker"] == "c"
    chosen = {"round": 1, "count": 2, "pending": ["c"]}
    assert next_task(chosen)["speaker"] == "c"


def test_skipped_participants_are_not_asked_and_swapped_ones_get_the_fallback_model():
    state = {"round": 1, "count": 2, "skipped": ["a"], "swapped": {"b": "big"}}
    planned = plan(state, context())
    assert planned["pending"] == ["b", "c"]
    assert next_task({**state, **planned})["model"] == "big"


def test_budget_stops_before_a_turn_that_would_not_fit_with_the_verdict():
    ctx = context(budget=5_000, max_tokens=200)
    need = transcript_tokens([]) + 200 + transcript_tokens([]) + verdict_tokens(ctx)
    assert plan({"round": 0, "count": 1, "tokens": 5_000 - need}, ctx).get("stop_reason") is None
    stopped = plan({"round": 0, "count": 1, "tokens": 5_000 - need + 1}, ctx)
    assert stopped["stop_reason"] == "token_budget"


def test_budget_arithmetic():
    assert fits_budget(used=100, prompt_tokens=10, reply_tokens=20, calls=3, reserve=10, budget=200)
    assert not fits_budget(100, 10, 20, 3, 11, 200)
    assert transcript_tokens([turn(0, "a", 1, "y" * 300)]) == transcript_tokens([]) + 100


def test_verdict_length_follows_the_scenario_then_the_turn_cap_then_the_context():
    assert verdict_tokens(context()) == VERDICT_MIN_TOKENS
    assert verdict_tokens(context(max_tokens=600)) == 1200
    assert verdict_tokens(context(verdict=99)) == 99
    assert verdict_tokens(context(context_tokens=1000)) == 500


def test_reply_cap_and_prompt_limit_leave_room_in_the_context():
    assert reply_cap(300, 3000, None) == 300
    assert reply_cap(300, 3000, 2048) == 300
    assert reply_cap(300, 3 * 1900, 2048) == 2048 - 1900 - CONTEXT_MARGIN
    assert reply_cap(300, 3 * 5000, 2048) == MIN_REPLY_TOKENS
    assert prompt_limit(None, 100) is None
    assert prompt_limit(2048, 100) == 2048 - 100 - CONTEXT_MARGIN
    assert estimate_tokens("abcd") == 2 and estimate_tokens(3) == 1


def test_simultaneous_speakers_see_earlier_rounds_and_the_moderator_only():
    turns = [
        turn(0, "m", 0, role="moderator"),
        turn(1, "a", 1),
        turn(2, "b", 2),
        turn(3, "m", 2, role="moderator"),
    ]
    assert [t["index"] for t in visible(turns, 2, Protocol.simultaneous)] == [0, 1, 3]
    assert len(visible(turns, 2, Protocol.round_robin)) == 4


def test_a_deadlock_ends_the_graph_and_other_stops_go_to_the_verdict():
    assert route({"stop_reason": "deadlock"}) == "end"
    assert route({"stop_reason": "token_budget"}) == "close"


def test_a_node_update_is_planned_on_the_state_it_will_make():
    state = {"round": 1, "count": 3, "tokens": 10, "said": {"a": 1}}
    update = {"count": 1, "tokens": 5, "said": {"b": 1}}
    assert merged(state, update) == {"round": 1, "count": 4, "tokens": 15,
                                     "said": {"a": 1, "b": 1}}  # fmt: skip
    planned = then_plan(state, update, context())
    assert planned["pending"] == ["c"] and planned["count"] == 1
    assert then_plan(state, {"stop_reason": "deadlock"}, context()) == {"stop_reason": "deadlock"}


def detection(speakers, score=0.9, detector="repetition"):
    return Detection(detector=detector, score=score, speakers=speakers, turns=[3, 5], detail="d")


def test_the_ladder_climbs_reframe_abstract_skip_stop():
    kwargs = {"mode": LoopMode.ladder, "participants": PANEL, "fallback_model": None}
    steps, tried, skipped = [], [], []
    for ladder in range(4):
        step = climb([detection(["a"])], ladder=ladder, tried=tried, skipped=skipped, **kwargs)
        steps.append(step.action)
        tried, skipped = step.tried, step.skipped
    assert steps == list(LADDER)
    assert tried == list(LADDER)
    assert skipped == ["a"]


def test_skipping_everyone_stops_instead_and_a_fallback_model_swaps():
    everyone = climb(
        [detection(PANEL)],
        mode=LoopMode.ladder,
        ladder=2,
        tried=[],
        participants=PANEL,
        skipped=[],
        fallback_model=None,
    )
    assert everyone.action == "stop"
    assert everyone.diagnosis().endswith("tried: nothing")
    swap = climb(
        [detection(["a", "m"])],
        mode=LoopMode.ladder,
        ladder=2,
        tried=[],
        participants=PANEL,
        skipped=[],
        fallback_model="big",
    )
    assert swap.action == "swap" and swap.speakers == ["a"] and swap.model == "big"


def test_stop_mode_stops_at_the_first_loop_and_the_strongest_detection_leads():
    step = climb(
        [detection(["a"], 0.5, "stagnation"), detection(["b"], 0.9, "refusal_deadlock")],
        mode=LoopMode.stop,
        ladder=0,
        tried=[],
        participants=PANEL,
        skipped=[],
        fallback_model=None,
    )
    assert step.action == "stop" and step.detector == "refusal_deadlock"
    assert step.speakers == ["a", "b"] and step.since == 3


def test_a_ladder_resets_after_quiet_turns():
    assert resolved(ladder=1, turns=10, last_detection=6, reset_after=4)
    assert not resolved(ladder=1, turns=9, last_detection=6, reset_after=4)
    assert not resolved(ladder=0, turns=20, last_detection=0, reset_after=4)


def test_the_architecture_page_draws_the_graph_as_it_is():
    from pathlib import Path

    from delib.debate.graph import diagram

    page = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    assert diagram().strip() in page
    assert "watch" in diagram()
