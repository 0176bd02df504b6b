"""The rolling summary that stands for the oldest turns when a prompt must fit a context.

``fold`` keeps the newest turns that fit and folds the oldest into a summary ``FOLD_STEP`` at a
time (the fewest that make the rest fit), so that the start of the prompt stays the same for
several turns in a row; ``fit`` keeps the newest turns that fit with no summary.
"""

from __future__ import annotations

import functools

from delib.library.personas import Persona

# Characters a message's label and separators add, per transcript turn.
TURN_OVERHEAD_CHARS = 40

# Turns move into the rolling summary this many at a time, so that the start of the prompt
# stays the same for several turns in a row and a prefix cache keeps working.
FOLD_STEP = 4
# Characters of a speaker's latest folded turn kept in the summary (whole sentences).
GIST_CHARS = 280


def fit(turns: list[dict], budget_chars: int) -> list[dict]:
    """The latest turns whose text fits in ``budget_chars``; the newest is kept even if it must
    be cut (from its start, so that its end, usually the question put to the next speaker,
    survives)."""
    kept: list[dict] = []
    used = 0
    for turn in reversed(turns):
        size = len(turn["text"]) + TURN_OVERHEAD_CHARS
        if used + size > budget_chars:
            if not kept and budget_chars > TURN_OVERHEAD_CHARS:
                room = budget_chars - TURN_OVERHEAD_CHARS
                kept.append({**turn, "text": "…" + turn["text"][-room:]})
            break
        kept.append(turn)
        used += size
    return kept[::-1]


@functools.lru_cache(maxsize=4096)
def gist(text: str, limit: int = GIST_CHARS) -> str:
    """The start of a turn, cut at a sentence end within ``limit`` characters (remembered:
    every prompt of a long debate summarises the same early turns again)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = max(text.rfind(". ", 0, limit), text.rfind("? ", 0, limit), text.rfind("! ", 0, limit))
    return text[: cut + 1] if cut > limit // 3 else text[: limit - 1] + "…"


def summarise(folded: list[dict], cast: dict[str, Persona], limit: int = GIST_CHARS) -> str:
    """The rolling summary: how many contributions it stands for, and each speaker's latest
    position among them, in order of first appearance."""
    latest: dict[str, dict] = {}
    for turn in folded:
        latest[turn["speaker"]] = turn
    lines = [_summary_header(len(folded))]
    lines += [_summary_line(pid, turn, cast, limit) for pid, turn in latest.items()]
    return "\n".join(lines)


def _summary_header(n: int) -> str:
    return (
        f"Summary of the first {n} contribution{'s' if n > 1 else ''} "
        "(shortened to fit the model's context), with each speaker's latest position there:"
    )


def _summary_line(pid: str, turn: dict, cast: dict[str, Persona], limit: int) -> str:
    persona = cast.get(pid)
    return f"- {persona.name if persona else pid}: {gist(turn['text'], limit)}"


def fold(
    turns: list[dict], budget_chars: int, cast: dict[str, Persona]
) -> tuple[str, list[dict], int]:
    """Fit ``turns`` into ``budget_chars``: (summary, turns kept verbatim, turns folded).

    The oldest turns are folded into the summary ``FOLD_STEP`` at a time, the fewest that make
    the rest fit; the newest turn always stays (cut from its start if it alone is too long).
    """
    # The same answer as building each cut's summary in turn and measuring it, in time that
    # grows with the turns that fit rather than with the whole debate (every prompt of a long
    # one asks): the turns any cut keeps are a run of the newest, measured from the end; the
    # summary of a cut is measured from each speaker's latest turn before it.
    first, kept = len(turns), 0  # turns[first:] is all that fits without a summary
    while first > 0:
        size = len(turns[first - 1]["text"]) + TURN_OVERHEAD_CHARS
        if kept + size > budget_chars:
            break
        first, kept = first - 1, kept + size
    if first == 0:
        return "", turns, 0
    last = len(turns) - 1
    cut = min(max(-(-first // FOLD_STEP) * FOLD_STEP, FOLD_STEP), last)
    if first <= last:
        speakers = set(cast)
        order: dict[str, None] = {}  # the speakers of turns[:cut], by first appearance
        for turn in turns[:cut]:
            order.setdefault(turn["speaker"])
            if len(order) >= len(speakers) and speakers <= order.keys():
                break
        latest: dict[str, dict] = {}
        for turn in reversed(turns[:cut]):
            latest.setdefault(turn["speaker"], turn)
            if len(latest) == len(order):
                break
        suffix = kept - sum(len(t["text"]) + TURN_OVERHEAD_CHARS for t in turns[first:cut])
        while True:
            lines = {pid: _summary_line(pid, latest[pid], cast, GIST_CHARS) for pid in order}
            if len(_summary_header(cut)) + sum(1 + len(x) for x in lines.values()) + suffix <= (
                budget_chars
            ):
                return "\n".join([_summary_header(cut), *lines.values()]), turns[cut:], cut
            if cut == last:
                break
            step_to = min(cut + FOLD_STEP, last)
            for turn in turns[cut:step_to]:
                order.setdefault(turn["speaker"])
                latest[turn["speaker"]] = turn
                suffix -= len(turn["text"]) + TURN_OVERHEAD_CHARS
            cut = step_to
    # Even one turn with the summary is too much: shorten the summary, then cut the turn.
    summary = summarise(turns[:last], cast, limit=max(60, GIST_CHARS // 4))
    summary = summary[: max(budget_chars // 2, 0)]
    return summary, fit(turns[last:], budget_chars - len(summary)), last
