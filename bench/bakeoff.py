"""Which small model should the embedded endpoint run? A 1-round debate on each shipped one.

    python -m bench.bakeoff [--tiny] [--scenario ID ...]

For every model in ``delib.models.local_models.LOCAL_MODELS``: a 1-round debate (the default
settings a new user gets, streaming off so the server reports its own token counts), timed
end to end after the server is up. Per model:

- seconds per turn (mean over the debate's turns) and for the whole debate;
- **echo**: share of turns that repeat delib's instructions instead of speaking: a speaker
  label as a layout writes one ("[The Philosopher]", "The Philosopher said:"), or any run of
  six words found in the instructions delib writes into the prompt (the rules, every
  persona's text, the instructions and their short cues for the opening, a turn, an
  interjection and the verdict);
- **restates the question**: share of turns with a run of six words from the scenario's
  title, question, background or motion (a moderator opening the debate is asked to do this;
  until 2026-11-25 this was counted as echo too);
- **on topic**: share of turns that use at least three distinct content words (four letters or
  more, not stop words) of the scenario's question and background; a crude lexical measure,
  blind to paraphrase, but it tells a turn about the question from one about anything else;
- **verdict**: valid on the first reply (no retry), valid after a retry, or not valid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time

from bench.common import temp_archive
from delib.debate import prompts
from delib.debate.runner import Run, RunRequest
from delib.detect.loops import LoopMode
from delib.errors import DelibError
from delib.library.scenarios import scenario_library
from delib.models.config import Overrides
from delib.models.local_models import LOCAL_MODELS, installed

SCENARIOS = ("alignment-difficulty", "corrigibility")
LABEL = re.compile(r"\[The [^\]]{2,40}\]")
ECHO_WORDS = 6  # a run of this many words from the prompt's own text is an echo
_WORD = re.compile(r"[a-z][a-z'-]{3,}")
_STOP = frozenset(
    "that this with from have what when which while there their they them then than into "
    "about would could should will been being does more most some such only also very just "
    "your yours ours over under again because these those were where who whom whose".split()
)
ON_TOPIC_WORDS = 3
LAYOUT: dict[str, str | None] = {"chosen": None}  # --layout; None: the endpoint's own


def topic_words(scenario_id: str) -> set[str]:
    scenario = scenario_library(None).get(scenario_id).item
    text = f"{scenario.question} {scenario.background}".lower()
    return {w for w in _WORD.findall(text) if w not in _STOP}


def _runs(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + ECHO_WORDS]) for i in range(len(words) - ECHO_WORDS + 1)}


def scaffolding(ctx) -> set[tuple[str, ...]]:
    """Every six-word run of the text delib itself puts into this debate's prompts."""
    motion = ctx.scenario.motion
    instructions = [
        prompts.opening_instruction(ctx.moderator, ctx.scenario),
        prompts.verdict_instruction(ctx.scenario, ctx.cast),
        prompts.interjection_instruction(ctx.moderator, 2),
    ]
    for persona in ctx.cast.values():
        instructions += [prompts.turn_instruction(persona, 1, 1, motion)]
        instructions += [prompts.turn_instruction(persona, 1, 2, motion)]
    texts = [prompts.RULES, *instructions]
    texts += [getattr(i, "cue", None) or "" for i in instructions]
    for persona in ctx.cast.values():
        texts += [persona.prompt, persona.role, f"You are {persona.name}, {persona.role}."]
    found: set[tuple[str, ...]] = set()
    for text in texts:
        found |= _runs(text)
    return found


def question_runs(ctx) -> set[tuple[str, ...]]:
    """Every six-word run of the scenario's own text."""
    s = ctx.scenario
    return _runs(f"{s.title} {s.question} {s.background} {s.motion or ''}")


def labels(ctx) -> re.Pattern:
    """A speaker's label in any layout's form: "[The Philosopher]" or "The Philosopher said:"."""
    names = "|".join(re.escape(p.name) for p in ctx.cast.values())
    return re.compile(rf"\[(?:{names})\]|\b(?:{names}) said:", re.I)


def echoes(text: str, scaffold: set[tuple[str, ...]], label: re.Pattern | None = None) -> bool:
    if LABEL.search(text) or (label is not None and label.search(text)):
        return True
    return not _runs(text).isdisjoint(scaffold)


async def one_debate(model: str, scenario: str) -> dict:
    request = RunRequest(
        scenario=scenario,
        overrides=Overrides(),
        rounds=1,
        stream=False,
        archive=temp_archive(),
        local_model=model,
        loops=LoopMode.warn,  # record loops, never change the debate
        prompt_layout=LAYOUT["chosen"],
    )
    run = Run(request)
    started = None
    context = None
    async for message in run.stream():
        if message["kind"] == "ready":
            started = time.perf_counter()
            context = message["context"]
    took = time.perf_counter() - (started or time.perf_counter())
    await run.aclose()
    result = run.result
    assert result is not None
    result.raise_for_error()
    turns = [t for t in result.turns if t["kind"] != "verdict"]
    words = topic_words(scenario)
    scaffold = scaffolding(context)
    events = [e["event"] for e in result.events]
    verdict = result.verdict or {}
    return {
        "model": model,
        "scenario": scenario,
        "turns": len(turns),
        "debate_s": round(took, 1),
        "s_per_turn": round(sum(t["latency"] for t in result.turns) / len(result.turns), 1),
        "echo": sum(echoes(t["text"], scaffold, labels(context)) for t in turns) / len(turns),
        "restates_question": sum(
            not _runs(t["text"]).isdisjoint(question_runs(context)) for t in turns
        )
        / len(turns),
        "on_topic": sum(
            len(words & set(_WORD.findall(t["text"].lower()))) >= ON_TOPIC_WORDS for t in turns
        )
        / len(turns),
        "verdict": (
            "first reply"
            if verdict.get("valid") and "verdict_retry" not in events
            else "after retry"
            if verdict.get("valid")
            else "not valid"
        ),
        "loop_events": sum(e == "loop_detected" for e in events),
        "completion_tokens": result.tokens.get("completion"),
    }


async def measure(
    tiny: bool = False,
    scenarios: tuple[str, ...] = SCENARIOS,
    models: tuple[str, ...] = tuple(LOCAL_MODELS),
) -> list[dict]:
    rows = []
    for model in models:
        if not installed(model):
            rows.append({"model": model, "error": "not installed"})
            continue
        for scenario in scenarios[:1] if tiny else scenarios:
            try:
                rows.append(await one_debate(model, scenario))
            except DelibError as exc:
                rows.append({"model": model, "scenario": scenario, "error": str(exc)})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """One row per model: means over its debates."""
    out = []
    for model in LOCAL_MODELS:
        mine = [r for r in rows if r["model"] == model and "error" not in r]
        if not mine:
            continue
        n = len(mine)
        out.append(
            {
                "model": model,
                "debates": n,
                "s_per_turn": round(sum(r["s_per_turn"] for r in mine) / n, 1),
                "debate_s": round(sum(r["debate_s"] for r in mine) / n, 1),
                "echo": f"{sum(r['echo'] for r in mine) / n:.0%}",
                "restates_question": f"{sum(r['restates_question'] for r in mine) / n:.0%}",
                "on_topic": f"{sum(r['on_topic'] for r in mine) / n:.0%}",
                "verdict": ", ".join(r["verdict"] for r in mine),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="one scenario")
    parser.add_argument("--scenario", action="append", help="scenario id (repeatable)")
    parser.add_argument("--model", action="append", help="only this shipped model (repeatable)")
    parser.add_argument("--layout", help="prompt layout (default: the embedded endpoint's)")
    args = parser.parse_args()
    scenarios = tuple(args.scenario) if args.scenario else SCENARIOS
    models = tuple(args.model) if args.model else tuple(LOCAL_MODELS)
    LAYOUT["chosen"] = args.layout
    rows = asyncio.run(measure(args.tiny, scenarios, models))
    print(json.dumps({"debates": rows, "summary": summary(rows)}, indent=2))


if __name__ == "__main__":
    main()
