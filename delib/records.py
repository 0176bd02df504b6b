"""The records a run writes, in one place: turns, events, token counts and the manifest.

Every reader and writer of ``turns.jsonl`` and ``manifest.json`` uses these types. They are
``TypedDict``s, not classes: records stay plain JSON data in files, checkpoints and the index,
and a record written by an older delib still reads (unknown keys are kept, missing optional
keys are absent).

    turns.jsonl   one Turn or Event per line, in the order they happened
    manifest.json one Manifest: what was asked, who spoke on which model, how it ended

``SCHEMA_VERSION`` is stored in each manifest; bump it when a field changes meaning.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict

# 2: manifests carry schema_version; the graph state holds counters, not the turn list.
SCHEMA_VERSION = 2

# The one rule of thumb for tokens when a server reports none, and for fitting prompts into a
# context: three characters a token errs on the long side for English (four is typical), so
# budgets stop early rather than late and prompts never overflow a context.
CHARS_PER_TOKEN = 3


class Stance(TypedDict):
    """One participant's position on the motion after one turn."""

    agreement: int | None  # 1..7, None when unknown
    confidence: float | None  # 0..1, None when not given or unreadable
    status: Literal["ok", "missing", "malformed"]
    line: NotRequired[str]  # the line as written, when there was one


def estimate_tokens(text: str | int) -> int:
    """Tokens in a text (or in that many characters), rounded up."""
    chars = text if isinstance(text, int) else len(text)
    return -(-chars // CHARS_PER_TOKEN)


def now() -> str:
    """A timestamp as records store it: UTC, ISO 8601, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Tokens(TypedDict):
    """Tokens of one model call; ``estimated`` when the server reported no usage."""

    prompt: int
    completion: int
    estimated: bool


class Refusal(TypedDict):
    label: Literal["refusal", "partial", "engaged"]
    score: float  # the local classifier's
    local: NotRequired[str]  # the local label, where a refusal judge gave ``label``
    judge: NotRequired[Literal["judge", "cache"]]  # asked, or its answer for the same text


TurnKind = Literal["opening", "statement", "interjection", "intervention", "verdict"]


class Turn(TypedDict):
    """One thing said by one persona."""

    type: Literal["turn"]
    index: int  # position in the debate, from 0 (the opening)
    round: int  # 0 for the opening
    speaker: str  # persona id
    name: str  # persona display name
    role: Literal["moderator", "participant"]
    kind: TurnKind
    text: str
    refusal: Refusal
    model: str
    endpoint: str
    tokens: Tokens
    latency: float  # seconds
    finish_reason: str | None
    started_at: str
    timings: NotRequired[dict[str, Any]]  # llama.cpp's own timings, where reported
    omitted_turns: NotRequired[int]  # turns folded into the rolling summary for this prompt
    summary_tokens: NotRequired[int]  # what that summary cost (estimated)
    truncated: NotRequired[dict[str, int]]  # received_chars, kept_chars: a reply past its cap
    stance: NotRequired[Stance]  # where the scenario has a motion (participants' statements)
    reasoning: NotRequired[str]  # a reasoning model's thinking, never part of ``text``
    reasoning_tokens: NotRequired[int]  # what it cost (reported, else estimated)
    tool_calls: NotRequired[int]  # tool calls the model made instead of answering
    failed: NotRequired[Literal["empty_reply"]]  # no answer in the reply, even when retried
    human: NotRequired[bool]  # spoken by a person in a human seat (``--human``), not a model


class Event(TypedDict):
    """Something that happened besides a turn: a loop detected, an intervention, a resume.

    Each kind adds its own fields (see ``render.event_detail`` for what each says)."""

    type: Literal["event"]
    event: str
    at: str


Record = Turn | Event


def make_event(name: str, **fields: Any) -> Event:
    return {"type": "event", "event": name, "at": now(), **fields}  # type: ignore[typeddict-item]


class TokenTotals(TypedDict):
    prompt: int
    completion: int
    total: int
    estimated: bool
    by_speaker: dict[str, int]  # persona id, or "moderator-calls" for speaker choices


class LoopSummary(TypedDict):
    detections: dict[str, int]  # by detector
    interventions: dict[str, int]  # by action
    deadlock: str | None  # the diagnosis, if the run stopped on one


class Manifest(TypedDict, total=False):
    """``manifest.json``: written when a run starts, rewritten when it ends."""

    schema_version: int
    run_id: str | None
    request: dict[str, Any]  # what was asked, for resume (flags only, never a key)
    scenario: dict[str, Any]
    protocol: str
    rounds: int
    max_rounds: int | None
    token_budget: int
    generation: dict[str, Any]
    loops: dict[str, Any]
    personas: list[dict[str, Any]]
    endpoints: list[dict[str, Any]]
    local_model: dict[str, Any] | None
    versions: dict[str, str]
    sweep: dict[str, Any] | None  # name, cell key, attempt and labels, for a sweep's runs
    started_at: str | None
    ended_at: str | None
    stop_reason: str | None
    error: str | None
    resumed: list[dict[str, Any]]
    loop_events: LoopSummary
    tokens: TokenTotals
    turns: int
    events: int
    verdict: dict[str, Any] | None
    adaptations: list[dict[str, Any]]


def spent(tokens: Tokens) -> int:
    """Prompt plus completion tokens of one model call."""
    return tokens["prompt"] + tokens["completion"]


def token_totals(records: list[Record] | list[dict]) -> TokenTotals:
    """Tokens of a run: prompt, completion, total, whether any were estimated, per speaker."""
    totals: TokenTotals = {
        "prompt": 0,
        "completion": 0,
        "total": 0,
        "estimated": False,
        "by_speaker": {},
    }
    for record in records:
        tokens = record.get("tokens")
        if not tokens:
            continue
        totals["prompt"] += tokens["prompt"]
        totals["completion"] += tokens["completion"]
        totals["estimated"] = totals["estimated"] or tokens["estimated"]
        who = record.get("speaker") if record["type"] == "turn" else "moderator-calls"
        by = totals["by_speaker"]
        by[who] = by.get(who, 0) + spent(tokens)
    totals["total"] = totals["prompt"] + totals["completion"]
    return totals


def loop_summary(records: list[Record] | list[dict]) -> LoopSummary:
    """Loop detections by detector, interventions by action, and a deadlock's diagnosis."""
    summary: LoopSummary = {"detections": {}, "interventions": {}, "deadlock": None}
    for r in records:
        if r["type"] != "event":
            continue
        if r["event"] == "loop_detected":
            counts = summary["detections"]
            counts[r["detector"]] = counts.get(r["detector"], 0) + 1
        elif r["event"] == "intervention":
            counts = summary["interventions"]
            counts[r["action"]] = counts.get(r["action"], 0) + 1
        elif r["event"] == "deadlock":
            summary["deadlock"] = r["diagnosis"]
    return summary


def turns_of(records: list[Record] | list[dict]) -> list[Turn]:
    return [r for r in records if r["type"] == "turn"]  # type: ignore[misc]


def events_of(records: list[Record] | list[dict]) -> list[Event]:
    return [r for r in records if r["type"] == "event"]  # type: ignore[misc]
