"""Loop detectors: refusal deadlock, repetition, cycles and stagnation, with no model call.

They run after every turn over a sliding window of the latest participant turns and report
only patterns that the newest turn takes part in, so a loop is reported when it grows, not
again for every later turn. Each turn's text is reduced once to word shingles and content
words; the cost per turn depends on the window, not on the length of the debate.

Defaults, and why:

- ``window = 6``: a round of four to six panelists; loops in small local models show within
  one round.
- ``repetition = 0.6``: Jaccard similarity of word 3-gram shingles at which two turns are
  near-duplicates. Independent turns on one topic share under 0.1; a turn copied with a few
  words changed keeps well above 0.6.
- ``cycle = 0.45``: the lower similarity at which turns one period apart count as the same
  move in a ping-pong (A, B, A, B) or a longer cycle (A, B, C, A, B, C).
- ``agreement_run = 3``: consecutive short turns that only agree or thank make a cycle.
- ``stagnation = 0.2``: share of a turn's content words unseen in the window before it,
  averaged over a full window. Debating turns bring 40-80 % new words; a debate that circles
  falls under 20 %.
- ``deadlock_speakers = 2``: refusals from two participants within the window are a refusal
  deadlock (one refusing panelist is a position; two are a stuck debate).
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from itertools import chain

from pydantic import BaseModel, ConfigDict, Field

from delib.detect.refusal import classify


class LoopMode(StrEnum):
    off = "off"  # no detection
    warn = "warn"  # detect and record, never intervene
    ladder = "ladder"  # intervene step by step, stop when nothing works
    stop = "stop"  # stop at the first detection


class LoopConfig(BaseModel):
    """Loop handling for a scenario; ``--loops`` overrides the mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: LoopMode = LoopMode.ladder
    window: int = Field(default=6, ge=2, le=50)
    repetition: float = Field(default=0.6, gt=0, le=1)
    cycle: float = Field(default=0.45, gt=0, le=1)
    agreement_run: int = Field(default=3, ge=2, le=20)
    stagnation: float = Field(default=0.2, ge=0, le=1)
    deadlock_speakers: int = Field(default=2, ge=1, le=12)
    reset_after: int = Field(
        default=3, ge=1, description="Turns without a detection after which the ladder resets"
    )
    fallback_model: str | None = Field(
        default=None, description="Model a stuck speaker is swapped to (same endpoint)"
    )


@dataclass(frozen=True)
class Detection:
    detector: str  # refusal_deadlock | repetition | cycle | stagnation | closure
    score: float
    speakers: list[str]
    turns: list[int]  # indices of the turns involved
    detail: str

    @property
    def since(self) -> int:
        return min(self.turns)


_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    "a an the and or but if then so of to in on at by for with from as is are was were be been "
    "being it its this that these those i you he she we they me my your our their not no do "
    "does did have has had will would can could should may might must just also very more "
    "most than there here what which who whom how why when where all any some such into about "
    "over under again only own same too s t don isn aren wasn weren".split()
)
_AGREEMENT = re.compile(
    r"^(?:\W*(?:i (?:fully |completely |totally )?agree|agreed|exactly|absolutely|indeed|"
    r"thank(?:s| you)|well said|great point|good point|you'?re right|that'?s right|"
    r"i concur|same here|likewise|yes)\b)",
    re.I,
)
AGREEMENT_MAX_WORDS = 40
# Repeats are also looked for beyond the window, against every earlier turn, for turns of at
# least this many words (short agreements repeat innocently; the window's checks see those).
LONG_RANGE_MIN_WORDS = 12
# A turn's sketch: the smallest hashes of its shingles (bottom-k MinHash). Two turns whose
# sketches share SKETCH_SHARED hashes are compared exactly; others cannot be near-repeats.
SKETCH_SIZE = 16
SKETCH_SHARED = 4


@lru_cache(maxsize=4096)
def _features(text: str) -> tuple[frozenset, frozenset, int]:
    """Word 3-gram shingles, content words, word count."""
    words = [w.lower() for w in _WORD.findall(text)]
    shingles = (
        frozenset(zip(words, words[1:], words[2:], strict=False))
        if len(words) > 2
        else (frozenset([tuple(words)]) if words else frozenset())
    )
    content = frozenset(w for w in words if w not in _STOP and len(w) > 2)
    return shingles, content, len(words)


@lru_cache(maxsize=8192)
def sketch(text: str) -> frozenset[int]:
    """The ``SKETCH_SIZE`` smallest shingle hashes of a turn (a few hundred bytes a turn)."""
    return frozenset(heapq.nsmallest(SKETCH_SIZE, {hash(s) for s in _features(text)[0]}))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of word 3-gram shingles (0 for empty text)."""
    sa, sb = _features(a)[0], _features(b)[0]
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


def refusal_label(turn: dict) -> str:
    info = turn.get("refusal")
    return info["label"] if info else classify(turn["text"]).label


def _is_agreement(text: str) -> bool:
    return _features(text)[2] <= AGREEMENT_MAX_WORDS and bool(_AGREEMENT.match(text.strip()))


def detect(turns: list[dict], config: LoopConfig) -> list[Detection]:
    """Patterns the newest turn of ``turns`` (participant turns, in order) takes part in."""
    if not turns:
        return []
    window = turns[-config.window :]
    newest = window[-1]
    found: list[Detection] = []

    # Refusal deadlock: the newest turn refuses, and so did others in the window.
    if refusal_label(newest) == "refusal":
        refusing = [t for t in window if refusal_label(t) == "refusal"]
        speakers = sorted({t["speaker"] for t in refusing})
        if len(speakers) >= config.deadlock_speakers:
            found.append(
                Detection(
                    "refusal_deadlock",
                    round(len(refusing) / len(window), 3),
                    speakers,
                    [t["index"] for t in refusing],
                    f"{len(refusing)} refusals from {len(speakers)} participants",
                )
            )

    # Repetition: the newest turn nearly repeats an earlier one.
    best, match = 0.0, None
    for turn in window[:-1]:
        score = similarity(newest["text"], turn["text"])
        if score > best:
            best, match = score, turn
    if best < config.repetition and len(turns) > len(window):
        best, match = _long_range_repeat(newest, turns[: -len(window)], config.repetition)
    if match is not None and best >= config.repetition:
        same = match["speaker"] == newest["speaker"]
        found.append(
            Detection(
                "repetition",
                round(best, 3),
                sorted({match["speaker"], newest["speaker"]}),
                [match["index"], newest["index"]],
                "repeats " + ("their own" if same else f"{match['speaker']}'s") + " earlier turn",
            )
        )

    # Cycles: every turn of the last two periods matches the turn one period before it.
    for period in (2, 3, 4):
        span = window[-2 * period :]
        if len(span) < 2 * period or len({t["speaker"] for t in span}) < 2:
            continue
        scores = [
            similarity(span[i]["text"], span[i - period]["text"]) for i in range(period, 2 * period)
        ]
        if min(scores) >= config.cycle:
            found.append(
                Detection(
                    "cycle",
                    round(min(scores), 3),
                    sorted({t["speaker"] for t in span}),
                    [t["index"] for t in span],
                    f"the same {period} moves twice over",
                )
            )
            break
    else:
        run = 0
        for turn in reversed(window):
            if not _is_agreement(turn["text"]):
                break
            run += 1
        if run >= config.agreement_run:
            span = window[-run:]
            found.append(
                Detection(
                    "closure",
                    1.0,
                    sorted({t["speaker"] for t in span}),
                    [t["index"] for t in span],
                    f"{run} turns in a row only agree or thank",
                )
            )

    # Stagnation: a full window in which turns bring almost no new words.
    if len(window) == config.window:
        novelty = []
        for i in range(1, len(window)):
            content = _features(window[i]["text"])[1]
            if not content:
                novelty.append(0.0)
                continue
            seen = frozenset().union(*(_features(t["text"])[1] for t in window[:i]))
            novelty.append(len(content - seen) / len(content))
        mean = sum(novelty) / len(novelty)
        if mean < config.stagnation:
            found.append(
                Detection(
                    "stagnation",
                    round(1 - mean, 3),
                    sorted({t["speaker"] for t in window}),
                    [t["index"] for t in window],
                    f"turns bring {mean:.0%} new words on average",
                )
            )
    return found


def _long_range_repeat(
    newest: dict, earlier: list[dict], threshold: float
) -> tuple[float, dict | None]:
    """The latest turn before the window that the newest turn nearly repeats: a cycle longer
    than the window is caught on its second pass. Candidates are the earlier turns whose
    16-hash sketches share a quarter of their hashes with the newest turn's (turns as similar
    as ``repetition`` share about half), found through an index of the sketches' hashes
    (``SketchIndex``) rather than by going through every earlier turn; only they are compared
    in full."""
    if _features(newest["text"])[2] < LONG_RANGE_MIN_WORDS:
        return 0.0, None
    index = SketchIndex.over(earlier)
    for turn in index.candidates(sketch(newest["text"])):
        score = similarity(newest["text"], turn["text"])
        if score >= threshold:
            return score, turn
    return 0.0, None


def scan_long_range_repeat(
    newest: dict, earlier: list[dict], threshold: float
) -> tuple[float, dict | None]:
    """``_long_range_repeat`` by going through every earlier turn (what the index replaces;
    the tests hold the two equal)."""
    if _features(newest["text"])[2] < LONG_RANGE_MIN_WORDS:
        return 0.0, None
    mine = sketch(newest["text"])
    for turn in reversed(earlier):
        if len(mine & sketch(turn["text"])) >= SKETCH_SHARED:
            score = similarity(newest["text"], turn["text"])
            if score >= threshold:
                return score, turn
    return 0.0, None


class SketchIndex:
    """Which earlier turns hold each sketch hash, built once per transcript and extended as it
    grows: the turns before the window grow by one a turn, so each call adds what is new."""

    # A few transcripts at once (a sweep runs several debates in one process).
    _open: dict[int, SketchIndex] = {}
    KEPT = 8

    def __init__(self) -> None:
        self.turns: list[dict] = []
        self.postings: dict[int, list[int]] = {}

    @classmethod
    def over(cls, earlier: list[dict]) -> SketchIndex:
        if not earlier:
            return cls()
        key = id(earlier[0])
        index = cls._open.get(key)
        n = len(index.turns) if index is not None else 0
        # The same transcript (the index holds its turns, so their ids are not reused) that
        # has not shrunk or changed: extend it; else start again.
        if index is None or n > len(earlier) or (n and index.turns[n - 1] is not earlier[n - 1]):
            index = cls()
            if len(cls._open) >= cls.KEPT:
                cls._open.pop(next(iter(cls._open)))
            cls._open[key] = index
        for turn in earlier[len(index.turns) :]:
            position = len(index.turns)
            index.turns.append(turn)
            for value in sketch(turn["text"]):
                index.postings.setdefault(value, []).append(position)
        return index

    def candidates(self, mine: frozenset[int]) -> list[dict]:
        """Turns sharing at least ``SKETCH_SHARED`` hashes with ``mine``, latest first."""
        postings = self.postings
        shared = Counter(chain.from_iterable(postings.get(value, ()) for value in mine))
        hits = sorted((p for p, n in shared.items() if n >= SKETCH_SHARED), reverse=True)
        return [self.turns[p] for p in hits]
