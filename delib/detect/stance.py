"""Stance over rounds: where a scenario states a motion, each participant ends a turn with a
line such as ``STANCE: 5/7 CONFIDENCE: 0.8``.

The line is parsed and taken out of the turn's text (the turn record keeps it verbatim under
``stance.line``). A missing or malformed line is recorded as unknown, never guessed: a turn
without a readable stance has ``agreement`` None and a ``status`` that says why.

    1 = strongly disagree with the motion … 4 = undecided … 7 = strongly agree
"""

from __future__ import annotations

import re

from delib.records import Stance

SCALE = 7
# A stance line is looked for among a turn's last few non-empty lines.
TAIL_LINES = 3

_LINE = re.compile(r"^\W{0,6}stance\b", re.I)
_AGREEMENT = re.compile(
    r"^\W{0,6}stance\W{0,4}?(?:[:=\-–]\s*)?\(?\s*(\d+(?:\.\d+)?)\s*(?:/\s*7\b)?", re.I
)
_CONFIDENCE = re.compile(r"confiden\w*\W{0,4}?[:=\-–]?\s*(\d+(?:\.\d+)?)\s*(%)?", re.I)


def instruction(motion: str) -> str:
    """What a participant is asked to add at the end of a turn."""
    return (
        f'Then end your turn with one line in exactly this form, about the motion "{motion}": '
        f"STANCE: <1-{SCALE}> CONFIDENCE: <0-1> (1 strongly disagree, 4 undecided, {SCALE} "
        "strongly agree; confidence: how sure you are)."
    )


def _confidence(line: str) -> float | None:
    match = _CONFIDENCE.search(line)
    if not match:
        return None
    value = float(match.group(1))
    if match.group(2) or (value == int(value) and 10 <= value <= 100):  # a percentage
        value /= 100
    return round(value, 3) if 0 <= value <= 1 else None


def split(text: str) -> tuple[str, Stance]:
    """The turn's text without its stance line, and the stance it states."""
    lines = text.split("\n")
    tail = [i for i, line in enumerate(lines) if line.strip()][-TAIL_LINES:]
    found = next((i for i in reversed(tail) if _LINE.match(lines[i])), None)
    if found is None:
        return text, {"agreement": None, "confidence": None, "status": "missing"}
    line = lines[found]
    rest = "\n".join(lines[:found] + lines[found + 1 :]).rstrip()
    match = _AGREEMENT.match(line)
    value = float(match.group(1)) if match else None
    if value is None or value != int(value) or not 1 <= value <= SCALE:
        stance: Stance = {"agreement": None, "confidence": None, "status": "malformed"}
    else:
        stance = {"agreement": int(value), "confidence": _confidence(line), "status": "ok"}
    stance["line"] = line.strip()
    return rest, stance
