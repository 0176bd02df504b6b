"""The intervention ladder: what the moderator does about a loop, one rung per detection.

    reframe → abstract → skip (or swap to the fallback model) → stop with 'deadlock'

A pure decision over the detections and the ladder's counters; ``nodes.watch`` carries it out
(speaks the moderator's turn, records the events). A rung that works (no detection for
``reset_after`` turns) resets the ladder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from delib.detect.loops import Detection, LoopMode

LADDER = ("reframe", "abstract", "skip", "stop")


@dataclass(frozen=True)
class Step:
    """What to do about the loop now."""

    action: str  # reframe | abstract | skip | swap | stop
    rung: int  # index in LADDER of the rung climbed
    speakers: list[str]  # who is stuck (participants among them for skip/swap)
    pattern: str  # the loop in words, for the moderator and the diagnosis
    tried: list[str]  # rungs climbed so far, this one included
    skipped: list[str] = field(default_factory=list)  # everyone skipped after a skip
    model: str | None = None  # the fallback model, for swap
    detector: str = ""  # the strongest detection, for a deadlock
    since: int = 0  # first turn of the loop, for a deadlock

    def diagnosis(self) -> str:
        before = self.tried[:-1]
        return f"{self.pattern}; tried: {', '.join(before) or 'nothing'}"


def describe(detections: list[Detection]) -> str:
    return "; ".join(f"{d.detector.replace('_', ' ')} ({d.detail})" for d in detections)


def resolved(ladder: int, turns: int, last_detection: int, reset_after: int) -> bool:
    """Whether a climbed ladder resets: no detection for ``reset_after`` turns."""
    return bool(ladder) and turns - last_detection >= reset_after


def climb(
    detections: list[Detection],
    *,
    mode: LoopMode,
    ladder: int,
    tried: list[str],
    participants: list[str],
    skipped: list[str],
    fallback_model: str | None,
) -> Step:
    """The next rung for these detections (``mode`` is ladder or stop)."""
    lead = max(detections, key=lambda d: d.score)
    stuck = sorted({s for d in detections for s in d.speakers})
    rung = len(LADDER) - 1 if mode is LoopMode.stop else min(ladder, len(LADDER) - 1)
    action = LADDER[rung]
    tried = [*tried, action]
    common = {
        "rung": rung,
        "speakers": stuck,
        "pattern": describe(detections),
        "tried": tried,
        "detector": lead.detector,
        "since": min(d.since for d in detections),
    }
    if action == "skip":
        movable = [p for p in stuck if p in participants]
        if fallback_model:
            return Step(action="swap", **{**common, "speakers": movable}, model=fallback_model)
        now_skipped = sorted({*skipped, *movable})
        if not set(participants) <= set(now_skipped):
            return Step(action="skip", **{**common, "speakers": movable}, skipped=now_skipped)
        action = "stop"  # skipping everyone would leave nobody to speak
    return Step(action=action, **common, skipped=list(skipped))
