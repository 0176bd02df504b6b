"""The debate as a LangGraph ``StateGraph``; this module only builds it.

::

    START → open ─┬─► turn (round_robin: speak + watch)      ──────────┐
         ▲        ├─► select → turn (moderator_selects)     ──────────┤
         │        ├─► speak ×N at once (simultaneous)       ─► watch ─┤
         │        ├─► interject (between rounds) ─────────────────────┤
         │        ├─► close (the verdict) → END                       │
         │        └─► END (deadlock, from turn or watch)              │
         └──── open, interject, turn and watch each end by planning ──┘

Each of ``open``, ``interject``, ``turn`` and ``watch`` ends by planning what comes next
(``routing.then_plan``) and says where the run goes with a ``Command``
(``routing.route`` of the state after its update): no separate planning step and no
conditional edge, whose router LangGraph would run over a fresh copy of the state. One
participant's turn is one step (spoken, then watched). When the next step is one
participant's ``turn`` or the moderator's interjection, its request is sent before this step
returns (``nodes.ask_next``), so LangGraph's commit and checkpoint run while the model
answers.

The nodes are in ``nodes`` (plain functions of the state and ``Runtime[DebateContext]``),
routing in ``routing`` and the intervention ladder in ``ladder``, both pure. The context is
given per run: ``graph.astream(state, config, context=DebateContext(...))``.
"""

from __future__ import annotations

import functools
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from delib.debate import nodes, routing
from delib.debate.state import DebateState

SPEAKERS = ("turn", "speak", "select", "close")
# Where each planning node can go: an interjection is always followed by the round's
# speakers, and only turn and watch can end the run with a deadlock.
DESTINATIONS = {
    "open": (*SPEAKERS, "interject"),
    "interject": SPEAKERS,
    "turn": (*SPEAKERS, "interject", END),
    "watch": (*SPEAKERS, "interject", END),
}


def planning(node):
    """A node that plans, as a node that also says where to go next (and, when that is a turn
    known in full, has already asked for it)."""

    @functools.wraps(node)
    async def step(state: DebateState, runtime) -> Command:
        update = await node(state, runtime)
        after = routing.merged(state, update)
        goto = routing.route(after)
        await nodes.ask_next(after, runtime, goto)
        return Command(update=update, goto=END if goto == "end" else goto)

    return step


def build_graph(
    state: type = DebateState, context: type = nodes.DebateContext, wrap: Any = None
) -> StateGraph:
    """The debate graph; ``wrap(name, node, plans)`` makes each node's step (by default
    ``planning(node)`` for the nodes that plan, the node itself for the others). LangGraph
    Studio's graph (``debate.studio``) wraps them to build the run's context itself."""
    wrap = wrap or (lambda name, node, plans: planning(node) if plans else node)
    graph = StateGraph(state, context_schema=context)
    plans = {"open": nodes.open_debate, "interject": nodes.interject, "turn": nodes.turn,
             "watch": nodes.watch}  # fmt: skip
    for name, node in plans.items():
        graph.add_node(name, wrap(name, node, True), destinations=DESTINATIONS[name])
    graph.add_node("speak", wrap("speak", nodes.speak, False))
    graph.add_node("select", wrap("select", nodes.select, False))
    graph.add_node("close", wrap("close", nodes.close, False))
    graph.add_edge(START, "open")
    graph.add_edge("select", "turn")
    graph.add_edge("speak", "watch")
    graph.add_edge("close", END)
    return graph


@functools.cache
def _compiled():
    return build_graph().compile()


def compile_graph(checkpointer: Any = None):
    """The graph, compiled once per process (a few milliseconds), bound to a run's
    checkpointer."""
    if checkpointer is None:
        return _compiled()
    return _compiled().copy(update={"checkpointer": checkpointer})


def diagram() -> str:
    """The compiled graph in Mermaid, as LangGraph draws it (docs/architecture.md)."""
    return compile_graph().get_graph().draw_mermaid()
