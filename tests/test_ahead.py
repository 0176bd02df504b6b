"""Asking ahead (``speaking.ask_ahead``): a turn's request sent before its step, taken up by
that step, or cancelled when the step never comes."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from delib.debate.speaking import TurnSpec, ask_ahead, cancel_ahead, speak_turn
from delib.debate.state import DebateContext, MemoryLog
from delib.library.personas import Persona
from delib.library.scenarios import Protocol, Scenario
from delib.models.config import Endpoint, EndpointConfig, SpeakerSettings
from delib.models.endpoints import Clients
from delib.testing import FakeOpenAIServer, FakeTransport


class Log(MemoryLog):
    """A memory log that also keeps what was begun."""

    def __init__(self) -> None:
        super().__init__()
        self.begun: list[tuple[int, str, str]] = []

    def begin(self, index: int, speaker: str, kind: str) -> None:
        self.begun.append((index, speaker, kind))


def context(base_url: str, transport=None) -> DebateContext:
    cast = {p: Persona(id=p, name=p.upper(), role="r", prompt="p") for p in ("m", "a", "b")}
    endpoint = Endpoint("e", EndpointConfig(base_url=base_url, retry_wait=0.01), "k")
    scenario = Scenario(id="s", title="t", question="q?", source_seed="seed", moderator="m",
                        participants=["a", "b"])  # fmt: skip
    return DebateContext(
        scenario=scenario,
        cast=cast,
        speakers={p: SpeakerSettings(endpoint, "test-model", 0.7, 50) for p in cast},
        clients=Clients(transport=transport),
        protocol=Protocol.round_robin,
        rounds=1,
        max_rounds=None,
        token_budget=10**6,
        stream=False,
        log=Log(),
    )


def spec(ctx: DebateContext, speaker: str, index: int = 1) -> TurnSpec:
    return TurnSpec(ctx.cast[speaker], index=index, round_no=1, kind="statement",
                    visible=[], instruction="Speak.")  # fmt: skip


def ahead_then_speak(ctx: DebateContext, asked: str, spoken: str, writer=lambda m: None):
    """Ask ``asked``'s turn ahead, then speak ``spoken``'s at the same index; the turn."""

    async def go():
        try:
            await ask_ahead(ctx, writer, spec(ctx, asked))
            return await speak_turn(ctx, writer, spec(ctx, spoken))
        finally:
            await ctx.clients.close()

    return asyncio.run(go())


def test_a_turn_asked_ahead_is_taken_up_by_its_step():
    fake = FakeOpenAIServer()
    fake.enqueue("asked ahead")
    ctx = context("http://fake/v1", FakeTransport(fake))
    messages: list[dict] = []
    turn = ahead_then_speak(ctx, "a", "a", messages.append)
    assert ctx.log.begun == [(1, "a", "statement")]
    assert turn["text"] == "asked ahead" and turn["speaker"] == "a"
    assert len(fake.chat_requests()) == 1  # one request, made ahead and taken up
    assert [m["kind"] for m in messages] == ["turn_start", "turn"]
    assert ctx.ahead == {} and ctx.log.turns == [turn]


def test_a_step_for_another_turn_drops_what_was_asked_and_asks_again():
    fake = FakeOpenAIServer()
    fake.enqueue("for a")
    fake.enqueue("for b")
    ctx = context("http://fake/v1", FakeTransport(fake))
    turn = ahead_then_speak(ctx, "a", "b")
    assert turn["speaker"] == "b" and turn["text"] == "for b"
    assert len(fake.chat_requests()) == 2


def test_a_request_whose_step_never_comes_is_cancelled(server: FakeOpenAIServer):
    """Over HTTP: ``ask_ahead`` returns once the request is sent (the reply takes 5 s);
    ``cancel_ahead``, as the runner calls it when a run stops, cancels it."""
    server.delay = 5.0
    server.enqueue("never read")
    ctx = context(server.base_url)

    async def go():
        try:
            started = asyncio.get_running_loop().time()
            await ask_ahead(ctx, lambda m: None, spec(ctx, "a"))
            waited = asyncio.get_running_loop().time() - started
            asked = ctx.ahead[1]
            assert not asked.reply.done() and waited < 2.5
            cancel_ahead(ctx)
            await asyncio.wait([asked.reply], timeout=2)
            return asked.reply.cancelled(), dict(ctx.ahead)
        finally:
            await ctx.clients.close()

    assert asyncio.run(go()) == (True, {})
    assert ctx.log.begun == [(1, "a", "statement")]  # it was in flight: the archive says so


def test_a_recovered_turn_is_not_asked_ahead():
    fake = FakeOpenAIServer()
    ctx = context("http://fake/v1", FakeTransport(fake))
    done = {"type": "turn", "index": 1, "speaker": "a", "kind": "statement", "text": "kept",
            "round": 1, "role": "participant"}  # fmt: skip
    ctx = dataclasses.replace(ctx, recovered={1: done})
    assert ahead_then_speak(ctx, "a", "a") is done
    assert fake.chat_requests() == [] and ctx.ahead == {}


def test_messages_of_a_turn_asked_before_the_graph_wait_for_its_step():
    """A new run's opening is asked before the graph starts (no writer yet): its turn_start
    and tokens are held, then given to the step that takes it up, in order."""
    fake = FakeOpenAIServer()
    fake.enqueue("The opening words arrive in pieces before anyone reads them.")
    ctx = dataclasses.replace(context("http://fake/v1", FakeTransport(fake)), stream=True)
    messages: list[dict] = []

    async def go():
        try:
            await ask_ahead(ctx, None, spec(ctx, "a"))
            await asyncio.sleep(0.05)  # the reply has come in: nothing was written anywhere
            assert messages == []
            return await speak_turn(ctx, messages.append, spec(ctx, "a"))
        finally:
            await ctx.clients.close()

    turn = asyncio.run(go())
    kinds = [m["kind"] for m in messages]
    assert kinds[0] == "turn_start" and kinds[-1] == "turn" and "token" in kinds
    assert set(kinds[1:-1]) == {"token"}
    assert "".join(m["text"] for m in messages if m["kind"] == "token") == turn["text"]


@pytest.mark.parametrize("scenario", ["alignment-difficulty", "corrigibility"])
def test_every_streamed_turn_of_a_run_streams_in_order(
    scenario: str, server: FakeOpenAIServer, tmp_path, caplog
):
    """Over HTTP, a whole run: the opening (asked before the graph starts) and every turn
    asked ahead stream turn_start, tokens, then the turn, with the turn's text in the tokens,
    and no message is lost to an error in a callback. In ``corrigibility`` the moderator
    chooses each speaker, a choice asked ahead too: one request per turn and per choice."""
    from delib.debate.runner import RunRequest, run_debate
    from delib.models.config import Overrides

    server.delay = 0.02
    messages: list[dict] = []
    request = RunRequest(
        scenario=scenario,
        overrides=Overrides(base_url=server.base_url, model="test-model"),
        rounds=2,
        archive=tmp_path / "archive",
        stream=True,
    )
    result = asyncio.run(run_debate(request, messages.append))
    assert result.stop_reason.value == "completed"
    for turn in result.turns:
        mine = [m for m in messages if m.get("index") == turn["index"] or
                (m["kind"] == "turn" and m["turn"]["index"] == turn["index"])]  # fmt: skip
        kinds = [m["kind"] for m in mine]
        assert kinds[0] == "turn_start" and kinds[-1] == "turn", (turn["index"], kinds)
        if turn["kind"] != "verdict":  # the verdict is not streamed
            assert set(kinds[1:-1]) == {"token"}, (turn["index"], kinds)
            assert turn["text"] in "".join(m["text"] for m in mine if m["kind"] == "token")
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    choices = [e for e in result.events if e["event"] == "speaker_selected"]
    assert (len(choices) > 0) == (scenario == "corrigibility")
    assert not [e for e in choices if e["fallback"]]
    assert len(server.chat_requests()) == len(result.turns) + len(choices)


def test_the_verdict_is_asked_ahead_when_the_budget_has_room_for_it():
    """``ask_next`` towards ``close``: the verdict's request goes out from the step before
    (its turn waits in ``ctx.ahead``), unless the budget would skip the verdict."""
    from types import SimpleNamespace

    from delib.debate.nodes import ask_next

    fake = FakeOpenAIServer()
    fake.enqueue('{"summary": "s"}')
    ctx = context("http://fake/v1", FakeTransport(fake))
    state = {"count": 3, "round": 1, "tokens": 0}

    async def go(ctx):
        try:
            await ask_next(state, SimpleNamespace(context=ctx, stream_writer=None), "close")
            return {i: (a.spec.kind, a.spec.speaker.id) for i, a in ctx.ahead.items()}
        finally:
            cancel_ahead(ctx)
            await ctx.clients.close()

    assert asyncio.run(go(ctx)) == {3: ("verdict", "m")}
    assert len(fake.chat_requests()) == 1
    poor = dataclasses.replace(context("http://fake/v1", FakeTransport(fake)), token_budget=10)
    assert asyncio.run(go(poor)) == {}
    assert len(fake.chat_requests()) == 1
