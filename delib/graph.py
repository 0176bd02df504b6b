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
(``routing.then_plan``), and ``routing.route`` sends the run on from there: no separate
planning step. One participant's turn is one step (spoken, then watched): each step costs a
checkpoint and LangGraph's scheduling, about 1 ms at 50 ms reply latency
(``bench.overhead``).

The nodes are in ``nodes`` (plain functions of the state and ``Runtime[DebateContext]``),
routing in ``routing`` and the intervention ladder in ``ladder``, both pure. The context is
given per run: ``graph.astream(state, config, context=DebateContext(...))``.
"""

from __future__ import annotations

import functools
from typing import Any

from langgraph.graph import END, START, StateGraph

from delib import nodes, routing
from delib.state import DebateContext, DebateState


def build_graph() -> StateGraph:
    graph = StateGraph(DebateState, context_schema=DebateContext)
    graph.add_node("open", nodes.open_debate)
    graph.add_node("turn", nodes.turn)
    graph.add_node("speak", nodes.speak)
    graph.add_node("select", nodes.select)
    graph.add_node("interject", nodes.interject)
    graph.add_node("watch", nodes.watch)
    graph.add_node("close", nodes.close)
    graph.add_edge(START, "open")
    # Where each planning node can go (LangGraph draws these): only watch can end the run
    # with a deadlock, and an interjection is always followed by the round's speakers.
    speakers = {"turn": "turn", "speak": "speak", "select": "select", "close": "close"}
    graph.add_conditional_edges("open", routing.route, {**speakers, "interject": "interject"})
    graph.add_conditional_edges("interject", routing.route, speakers)
    for watching in ("turn", "watch"):
        graph.add_conditional_edges(
            watching, routing.route, {**speakers, "interject": "interject", "end": END}
        )
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
