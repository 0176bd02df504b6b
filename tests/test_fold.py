"""The rolling summary's fit (``prompts.fold``) in time linear in the turns: the same answer,
on varied transcripts and budgets, as building every cut's summary and measuring it."""

from __future__ import annotations

import random

import pytest

from delib.debate.folding import FOLD_STEP, GIST_CHARS, TURN_OVERHEAD_CHARS, fit, fold, summarise
from delib.library.personas import Persona

CAST = {
    pid: Persona(id=pid, name=f"The {pid.title()}", role="r", prompt="p")
    for pid in ("chair", "builder", "auditor", "skeptic")
}


def _size(turns: list[dict]) -> int:
    return sum(len(t["text"]) + TURN_OVERHEAD_CHARS for t in turns)


def fold_by_trying_every_cut(turns, budget_chars, cast):
    """What ``fold`` did before: every cut's summary built and measured."""
    if _size(turns) <= budget_chars:
        return "", turns, 0
    last = len(turns) - 1
    for cut in [*range(FOLD_STEP, last, FOLD_STEP), last]:
        summary = summarise(turns[:cut], cast)
        if len(summary) + _size(turns[cut:]) <= budget_chars:
            return summary, turns[cut:], cut
    summary = summarise(turns[:last], cast, limit=max(60, GIST_CHARS // 4))
    summary = summary[: max(budget_chars // 2, 0)]
    return summary, fit(turns[last:], budget_chars - len(summary)), last


def transcript(rng: random.Random, n: int) -> list[dict]:
    words = "values oversight debate evidence. shutdown? honesty! scaling circuits".split()
    return [
        {"index": i, "speaker": rng.choice(list(CAST)),
         "text": " ".join(rng.choice(words) for _ in range(rng.randint(1, 120)))}
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_fold_gives_what_trying_every_cut_gives(seed: int):
    rng = random.Random(seed)
    turns = transcript(rng, rng.randint(1, 300))
    total = _size(turns)
    for budget in {50, 400, total // 3, total // 2, total - 1, total, rng.randint(0, total)}:
        assert fold(turns, budget, CAST) == fold_by_trying_every_cut(turns, budget, CAST)
