"""The debate graph for LangGraph Studio and ``langgraph dev`` (``langgraph.json`` points here).

``graph`` is the same graph as a ``delib run`` (the same nodes, routing and ladder), built
with a wrapper around each node that makes the run's ``DebateContext`` from the run's
context (``Settings``: which scenario, which server and model, how many rounds), so that the
LangGraph server can start it with nothing but JSON::

    POST /threads/{thread}/runs/wait
    {"assistant_id": "debate", "input": {},
     "context": {"scenario": "corrigibility", "base_url": "http://localhost:8080/v1"}}

What differs from ``delib run``: the LangGraph server keeps the checkpoints, and the record of
the run is the graph's own state (``transcript``: every turn and event, in order), not a run
folder in an archive; nothing is asked ahead (the next request is sent when its step begins).
With no server given (``base_url``, ``endpoint`` or ``OPENAI_BASE_URL``), the embedded model
is started once, in the LangGraph server's process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
from collections import OrderedDict
from typing import Annotated, Any

from langgraph.config import get_config
from langgraph.graph import END
from langgraph.types import Command

from delib.debate import routing
from delib.debate.graph import build_graph
from delib.debate.prepare import Loaded, RunRequest, load, prepare
from delib.debate.state import DebateState, MemoryLog
from delib.detect.loops import LoopMode
from delib.detect.refusal import classify
from delib.library.scenarios import Protocol
from delib.models.config import Overrides
from delib.models.endpoints import Clients
from delib.models.local import DEFAULT_CTX, LocalServer
from delib.records import Record


@dataclasses.dataclass
class Settings:
    """A Studio run's settings (the graph's context schema; every field may be left out)."""

    scenario: str = "alignment-difficulty"
    base_url: str | None = None  # an OpenAI-compatible server; none: the embedded model
    model: str | None = None
    endpoint: str | None = None  # a named endpoint of delib.toml or a preset
    rounds: int | None = None
    protocol: str | None = None  # round_robin, moderator_selects, simultaneous
    loops: str | None = None  # off, warn, ladder, stop
    seed: int | None = None


class StudioState(DebateState, total=False):
    """The debate's counters, and the record of the run (turns and events, in order)."""

    transcript: Annotated[list[dict], operator.add]


class _Tap:
    """A node's view of its thread's log: shared reads, and the records this node added (its
    share of ``transcript``; simultaneous speakers each return only their own)."""

    def __init__(self, shared: MemoryLog) -> None:
        self.shared = shared
        self.mine: list[Record] = []

    @property
    def turns(self) -> list:
        return self.shared.turns

    @property
    def chars(self) -> int:
        return self.shared.chars

    @property
    def participant_turns(self) -> list:
        return self.shared.participant_turns

    @property
    def said(self) -> list:
        return self.shared.said

    def begin(self, index: int, speaker: str, kind: str) -> None:
        pass

    def token(self, index: int, text: str) -> None:
        pass

    def add(self, record: Record) -> None:
        self.shared.add(record)
        self.mine.append(record)

    def catch_up(self) -> None:
        pass


KEPT_THREADS = 32  # threads whose log is kept in memory between steps
_logs: OrderedDict[str, MemoryLog] = OrderedDict()
_prepared: dict[tuple, Any] = {}
_local: dict[str, LocalServer] = {}


def _log_for(thread: str, state: dict) -> MemoryLog:
    """The thread's log; rebuilt from the state's transcript where that is longer (a step of
    a thread this process has not seen, after a restart of the server)."""
    log = _logs.get(thread)
    transcript = state.get("transcript") if isinstance(state, dict) else None
    if log is None or (transcript is not None and len(transcript) != len(log.records)):
        log = MemoryLog(transcript or [])
    _logs[thread] = log
    _logs.move_to_end(thread)
    while len(_logs) > KEPT_THREADS:
        _logs.popitem(last=False)
    return log


async def _start_local(model: Any, ctx: int) -> LocalServer:
    if model.alias not in _local:
        server = LocalServer(model, ctx=ctx)
        await server.start()
        _local[model.alias] = server
    return _local[model.alias]


async def _context(settings: Settings | dict | None) -> Any:
    """The ``DebateContext`` for these settings, prepared once per event loop."""
    if isinstance(settings, dict):
        settings = Settings(**settings)
    settings = settings or Settings()
    key = (id(asyncio.get_running_loop()), *dataclasses.astuple(settings))
    if key not in _prepared:
        request = RunRequest(
            scenario=settings.scenario,
            overrides=Overrides(
                base_url=settings.base_url, model=settings.model, endpoint=settings.endpoint
            ),
            rounds=settings.rounds,
            protocol=Protocol(settings.protocol) if settings.protocol else None,
            loops=LoopMode(settings.loops) if settings.loops else None,
            seed=settings.seed,
            ctx=DEFAULT_CTX,
        )
        # Reading the files blocks, which the LangGraph server forbids on its event loop:
        # read in a thread, then checked against the servers here.
        loaded = await asyncio.to_thread(_load, request)
        prepared = await prepare(request, Clients(), _start_local, lambda t: None, loaded=loaded)
        _prepared[key] = prepared.context
    return _prepared[key]


def _load(request: RunRequest) -> Loaded:
    loaded = load(request)
    classify("warming up")  # the refusal model's weights are read on first use
    return loaded


def _wrap(name: str, node: Any, plans: bool) -> Any:
    async def step(state: Any, runtime: Any) -> Any:
        thread = str(get_config().get("configurable", {}).get("thread_id", ""))
        tap = _Tap(_log_for(thread, state))
        ctx = dataclasses.replace(await _context(runtime.context), log=tap)
        update = await node(state, runtime.override(context=ctx))
        if not plans:
            return {**update, "transcript": tap.mine}
        goto = routing.route(routing.merged(state, update))
        return Command(
            update={**update, "transcript": tap.mine}, goto=END if goto == "end" else goto
        )

    step.__name__ = name
    return step


graph = build_graph(StudioState, Settings, _wrap).compile()
