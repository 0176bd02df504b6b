"""What the debate graph carries: the state (checkpointed counters) and the context (the run's
fixed setup and its log).

The state holds only small counters and decisions, so a checkpoint costs the same at turn 5 as
at turn 500 and the checkpoint file grows linearly with the run. The turns themselves live in
the run's log (``RunLog``): nodes append each finished turn and event to it, and it is on disk
before the node returns, so the transcript on disk is always at least as far along as the last
checkpoint (``resume`` relies on that).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Protocol, TypedDict, get_args, get_origin, get_type_hints

from delib.detect.loops import LoopConfig
from delib.library.personas import Persona
from delib.library.scenarios import Protocol as TurnProtocol
from delib.library.scenarios import Scenario
from delib.models.config import SpeakerSettings
from delib.models.endpoints import Clients
from delib.records import Record, Turn, turns_of

# Default budget when neither the scenario nor a flag sets one.
DEFAULT_TOKEN_BUDGET = 200_000


class StopReason(StrEnum):
    """Why a run ended."""

    completed = "completed"  # every planned round ran; the moderator closed
    max_rounds = "max_rounds"  # the scenario's round ceiling cut the planned rounds short
    token_budget = "token_budget"  # the next turn would not fit in the token budget
    deadlock = "deadlock"  # the loop detector gave up breaking a loop
    closure = "closure"  # participants only agreed and thanked: the moderator closed early
    empty_replies = "empty_replies"  # participants answered nothing, twice in a row, retried
    error = "error"  # a model call failed for good (the error is recorded)
    interrupted = "interrupted"  # Ctrl-C or SIGTERM


def _merge(old: dict, new: dict) -> dict:
    return {**old, **new}


class DebateState(TypedDict, total=False):
    """Plain, JSON-serialisable counters; fields with a reducer accumulate across nodes."""

    count: Annotated[int, operator.add]  # turns finished: the next turn's index
    events: Annotated[int, operator.add]  # events the graph's nodes have recorded
    tokens: Annotated[int, operator.add]  # tokens used by every model call so far
    said: Annotated[dict[str, int], _merge]  # participant -> last round they spoke in
    round: int
    pending: list[str]  # participants still to speak this round, in order
    step: str  # how the pending speak: "one", "all" (at once) or "select" (moderator picks)
    interject: bool  # the moderator speaks before the round goes on
    stop_reason: str | None
    verdict: dict | None
    # loop handling (see nodes.watch and ladder)
    checked: int  # turns already run through the detectors
    ladder: int  # rungs of the intervention ladder climbed since the last reset
    last_detection: int  # number of turns when a loop was last detected
    skipped: list[str]  # participants left out after the ladder's third rung
    tried: list[str]  # what the ladder has tried, for the diagnosis
    swapped: dict[str, str]  # participants moved to the fallback model by the ladder


# Each accumulating field's reducer, as LangGraph applies it (routing.merged uses them too).
REDUCERS = {
    name: get_args(hint)[1]
    for name, hint in get_type_hints(DebateState, include_extras=True).items()
    if get_origin(hint) is Annotated
}


class SpeakTask(TypedDict):
    """What one ``speak`` node is sent: who, at which index and round, on which model."""

    speaker: str
    index: int
    round: int
    model: str | None  # a fallback model the ladder swapped in, else None


class RunLog(Protocol):
    """Where nodes put what happened. ``add`` returns once the record is durable."""

    @property
    def turns(self) -> list[Turn]: ...

    # Kept up to date as turns are added (``MemoryLog``): the characters of every turn's text,
    # the participants' turns, and those of them with an answer in them, in index order.
    chars: int
    participant_turns: list[Turn]
    said: list[Turn]

    def begin(self, index: int, speaker: str, kind: str) -> None: ...

    def token(self, index: int, text: str) -> None: ...

    def add(self, record: Record) -> None: ...

    def catch_up(self) -> None:
        """Work that can be done while a model answers (the archive's index)."""


def _index(turn: Turn) -> int:
    return turn["index"]


class MemoryLog:
    """A ``RunLog`` kept in memory only (unit tests, and the base of the archive's log)."""

    def __init__(self, records: list[Record] | None = None) -> None:
        self.records: list[Record] = list(records or [])
        self._turns: list[Turn] = sorted(turns_of(self.records), key=lambda t: t["index"])
        # Kept as turns are added, so that no step of a long debate goes through them all:
        # the characters of every turn's text, the participants' turns, and those of them
        # with an answer in them (what the loop detectors watch), each in index order.
        self.chars = sum(len(t["text"]) for t in self._turns)
        self.participant_turns = [t for t in self._turns if t["role"] == "participant"]
        self.said = [t for t in self.participant_turns if "failed" not in t]

    @property
    def turns(self) -> list[Turn]:
        """Finished turns in index order (simultaneous turns finish in any order)."""
        return self._turns

    def begin(self, index: int, speaker: str, kind: str) -> None:
        pass

    def token(self, index: int, text: str) -> None:
        pass

    def add(self, record: Record) -> None:
        self.records.append(record)
        if record["type"] == "turn":
            bisect.insort(self._turns, record, key=_index)
            self.chars += len(record["text"])
            if record["role"] == "participant":
                bisect.insort(self.participant_turns, record, key=_index)
                if "failed" not in record:
                    bisect.insort(self.said, record, key=_index)

    def catch_up(self) -> None:
        pass


@dataclass(frozen=True)
class DebateContext:
    """Everything fixed for one run, handed to every node as ``runtime.context``."""

    scenario: Scenario
    cast: dict[str, Persona]  # moderator and participants by id
    speakers: dict[str, SpeakerSettings]  # resolved, with a concrete model
    clients: Clients
    protocol: TurnProtocol
    rounds: int
    max_rounds: int | None
    token_budget: int
    seed: int | None = None
    stream: bool = True
    loops: LoopConfig = LoopConfig()
    prompt_layout: str | None = None  # None: each endpoint's own (Endpoint.layout)
    judge: Any = None  # a judge.Judge for the refusal classifier's uncertain cases, if asked
    # Participants seated by a person (``--human``): their turns pause the graph with
    # LangGraph's ``interrupt()`` until the runner hands the person's reply back.
    humans: frozenset[str] = frozenset()
    trace: Any = None  # the run's OpenTelemetry spans (debate.otel.RunTracer), when traced
    log: RunLog = field(default_factory=MemoryLog)
    # Turns a killed run finished after its last checkpoint: when the resumed graph comes to
    # speak one of them again, the finished turn is used as it is (no second model call).
    recovered: Mapping[int, Turn] = field(default_factory=dict)
    # Turns whose request went out before their step began (``speaking.ask_ahead``), by
    # index: the run's own, never copied by ``dataclasses.replace``.
    ahead: dict[int, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    # The moderator's choices of speaker asked the same way (``speaking.choose_ahead``), by
    # the index of the turn they choose for.
    choices: dict[int, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def participants(self) -> list[str]:
        return list(self.scenario.participants)

    @property
    def moderator(self) -> Persona:
        return self.cast[self.scenario.moderator]

    def role(self, pid: str) -> str:
        return "moderator" if pid == self.scenario.moderator else "participant"

    def recursion_limit(self) -> int:
        """Supersteps a run can need: per round plan+select+speak+watch per speaker, and an
        interjection."""
        rounds = min(self.rounds, self.max_rounds or self.rounds)
        return rounds * (4 * len(self.participants) + 2) + 10
