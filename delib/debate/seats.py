"""Human seats: participants spoken for by a person instead of a model.

A human seat's turn pauses the graph with LangGraph's ``interrupt()`` (``speaking``); the run
(``runner``) finds the pending seats in the graph's state, asks each seat's answerer for the
reply and goes on with ``Command(resume=...)``. The pause is checkpointed like any step: a run
killed while it waits for a person resumes at the waiting seat.

An answerer is a callable taking a ``Seat`` and returning the reply (text, or an awaitable of
it); the CLI's reads the terminal, or one line of standard input per turn when that is not a
terminal. An answerer that has no reply (input ended) raises ``NoReply``: the run stops with an
error that says so, every turn before it kept, and ``delib resume`` goes on from that seat.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from langgraph.types import Command

from delib.errors import DelibError, SettingError
from delib.records import Turn


class NoReply(DelibError):
    """A human seat's answerer had no reply to give (its input ended)."""


@dataclass(frozen=True)
class Seat:
    """A human seat whose turn has come: who, where, what they are asked, what was said."""

    seat: str  # persona id
    name: str
    index: int
    round: int
    instruction: str
    turns: list[Turn]  # the debate so far


Answerer = Callable[[Seat], "str | Awaitable[str]"]


def check_seats(seats: list[str], participants: list[str], moderator: str) -> None:
    """Human seats name participants of the scenario."""
    for pid in seats:
        if pid == moderator:
            raise SettingError(
                "human", pid, "moderates this scenario; a human seat takes a participant: "
                f"one of {', '.join(participants)}",
            )  # fmt: skip
        if pid not in participants:
            raise SettingError(
                "human", pid, f"is not in this scenario; its participants: "
                f"{', '.join(participants)}",
            )  # fmt: skip


def answerers_for(seats: tuple[str, ...], given: Mapping[str, Answerer] | None) -> dict:
    """The answerer of every seat, or a clear error for a seat without one."""
    given = dict(given or {})
    missing = [pid for pid in seats if pid not in given]
    if missing:
        raise SettingError(
            "human", missing[0], "is a human seat of this run but has no answerer: pass "
            f"human={{'{missing[0]}': callback}} (from the CLI: --human {missing[0]})",
        )  # fmt: skip
    return {pid: given[pid] for pid in seats}


def pending(snapshot: Any) -> list[Any]:
    """The graph's pending human-seat interrupts (``Interrupt`` objects with ``id``, ``value``)."""
    found = list(getattr(snapshot, "interrupts", ()) or ())
    return [i for i in found if isinstance(i.value, dict) and "seat" in i.value]


async def answer(answerer: Answerer, seat: Seat) -> dict:
    """What the seat's person said, and how long they took, for ``Command(resume=...)``."""
    started = time.monotonic()
    if inspect.iscoroutinefunction(answerer):
        text = await answerer(seat)
    else:
        text = await _in_thread(answerer, seat)
        if inspect.isawaitable(text):
            text = await text
    if text is None:
        raise NoReply(f"no reply for {seat.name}'s turn {seat.index}")
    return {"text": str(text), "latency": time.monotonic() - started}


async def drive(
    graph: Any, start: Any, config: dict, context: Any, answerers: Mapping[str, Answerer]
) -> AsyncIterator[dict]:
    """The graph's custom stream from ``start`` to its end, answering each pause at a human
    seat on the way (a ``human_turn`` message, then the seat's answerer)."""
    command = start
    while True:
        async for chunk in graph.astream(
            command, config, context=context, stream_mode="custom", durability="async"
        ):
            yield chunk
        waiting = pending(await graph.aget_state(config))
        if not waiting:
            return
        answers = {}
        for item in waiting:
            seat = Seat(**item.value, turns=list(context.log.turns))
            yield {"kind": "human_turn", "seat": seat}
            answers[item.id] = await answer(answerers[seat.seat], seat)
        command = Command(resume=answers)


def _in_thread(answerer: Answerer, seat: Seat) -> asyncio.Future:
    """A blocking answerer (one reading a terminal) in a daemon thread of its own: the event
    loop goes on meanwhile, and a run stopped while a person is typing does not wait for them
    (a pool thread would hold the process at exit until Enter was pressed)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result = answerer(seat)
        except BaseException as exc:  # handed to the run, which reports it
            result, error = None, exc
        else:
            error = None
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the run is over and its loop closed: nobody waits for this
            pass

    threading.Thread(target=work, daemon=True, name=f"delib-seat-{seat.seat}").start()
    return future
