"""Turning the shared transcript into the messages one speaker sees.

Two layouts:

- ``persona_first`` (for hosted endpoints): the system text is the speaker's persona and the
  rules; the transcript is seen from the speaker's point of view: their own earlier turns are
  ``assistant`` messages, everyone else's are ``user`` messages prefixed with the speaker's
  name, and runs of one role are merged, so the list starts with ``user`` and strictly
  alternates.
- ``shared_first`` (the default for local endpoints): everything every speaker shares comes
  first and in the same words (the rules, the brief, the rolling summary, the transcript with
  every turn labelled by name), and the speaker's persona and instruction come last, all in one
  user message. Consecutive prompts then share their longest part as an exact prefix, which
  llama.cpp's prompt cache reuses instead of evaluating it again.

Either way the system text can be sent natively or folded into the first user message (see
``endpoints.Prompt``). When the prompt must fit a context, the oldest turns are folded into a
rolling summary that keeps each speaker's latest position among them (``fold``).
"""

from __future__ import annotations

import json
import re

from delib.debate.folding import TURN_OVERHEAD_CHARS, fold, gist
from delib.detect import stance
from delib.library.personas import Persona
from delib.library.scenarios import Scenario
from delib.models.endpoints import Prompt
from delib.records import CHARS_PER_TOKEN

# Markers the test server's default responder keys on; stable wording, part of the protocol.
TURN_MARKER = "It is your turn"
SELECT_MARKER = "Who should speak next?"
VERDICT_MARKER = "Write the closing verdict"

# Characters per token assumed when fitting a prompt into a context: fewer than the usual four,
# so that the estimate errs on the short side for tokenizers that split English finely.
FIT_CHARS_PER_TOKEN = CHARS_PER_TOKEN  # the one estimate (delib.records)


class Instruction(str):
    """An instruction, with a ``cue``: the few words a small model is given instead in the
    ``compact`` layout (None: the same text)."""

    cue: str | None = None


def _instruction(text: str, cue: str | None) -> Instruction:
    made = Instruction(text)
    made.cue = cue
    return made


RULES = """\
You are taking part in a structured deliberation between several panelists, run by a
moderator. Stay in character. Argue from your own positions, respond to what others actually
said, and keep each contribution short: one to three paragraphs. Speak only for yourself:
never write lines for other panelists or the moderator, and do not prefix your reply with
your name."""


def _brief(scenario: Scenario, cast: dict[str, Persona]) -> str:
    panel = "\n".join(
        f"- {cast[pid].name} ({pid}): {cast[pid].role}" for pid in scenario.participants
    )
    moderator = cast[scenario.moderator]
    parts = [f"Deliberation: {scenario.title}", f"Question: {scenario.question.strip()}"]
    if scenario.background.strip():
        parts.append(f"Background: {scenario.background.strip()}")
    parts.append(f"Moderator: {moderator.name}\nPanelists:\n{panel}")
    return "\n\n".join(parts)


def _label(turn: dict, cast: dict[str, Persona]) -> str:
    persona = cast.get(turn["speaker"])
    name = persona.name if persona else turn["speaker"]
    return f"[{name}]"


PERSONA_FIRST = "persona_first"
SHARED_FIRST = "shared_first"
COMPACT = "compact"
LAYOUTS = (PERSONA_FIRST, SHARED_FIRST, COMPACT)
# The compact layout: the latest turns it shows, and the characters of each.
COMPACT_TURNS = 6
COMPACT_TURN_CHARS = 600


def build(
    speaker: Persona,
    scenario: Scenario,
    cast: dict[str, Persona],
    turns: list[dict],
    instruction: str,
    max_prompt_tokens: int | None = None,
    layout: str = PERSONA_FIRST,
) -> Prompt:
    """The prompt for ``speaker`` in the given layout (see the module's docstring).

    With ``max_prompt_tokens`` the oldest turns are folded into a rolling summary until the
    estimate fits; the brief, the rules, the persona and the instruction always stay.
    """
    if layout == SHARED_FIRST:
        return _build_shared(speaker, scenario, cast, turns, instruction, max_prompt_tokens)
    if layout == COMPACT and getattr(instruction, "cue", None):
        return _build_compact(speaker, scenario, cast, turns, instruction.cue)
    system = f"{speaker.prompt.strip()}\n\n{RULES}\nYou are {speaker.name}."
    brief = _brief(scenario, cast)
    summary, omitted = "", 0
    if max_prompt_tokens is not None:
        fixed = len(system) + len(brief) + len(instruction) + 2 * TURN_OVERHEAD_CHARS
        summary, turns, omitted = fold(turns, max_prompt_tokens * FIT_CHARS_PER_TOKEN - fixed, cast)
        if summary:
            brief += f"\n\n{summary}"
    messages: list[dict[str, str]] = [{"role": "user", "content": brief}]
    for turn in turns:
        if turn["speaker"] == speaker.id:
            role, content = "assistant", turn["text"]
        else:
            role, content = "user", f"{_label(turn, cast)} {turn['text']}"
        if messages[-1]["role"] == role:
            messages[-1]["content"] += f"\n\n{content}"
        else:
            messages.append({"role": role, "content": content})
    if messages[-1]["role"] == "user":
        messages[-1]["content"] += f"\n\n{instruction}"
    else:
        messages.append({"role": "user", "content": instruction})
    return Prompt(system=system, messages=messages, omitted=omitted, summary_chars=len(summary))


def _sentences(text: str, n: int) -> str:
    return " ".join(re.split(r"(?<=[.!?])\s+", " ".join(text.split()))[:n])


def _build_compact(
    speaker: Persona, scenario: Scenario, cast: dict[str, Persona], turns: list[dict], cue: str
) -> Prompt:
    """For models of a few hundred million parameters, which continue whatever scaffolding they
    are shown: who they are in two sentences, the question, the latest turns as a list without
    speaker labels (which they copy), and a cue of a few words (bench.bakeoff measures the
    echo)."""
    system = f"You are {speaker.name}, {speaker.role}. {_sentences(speaker.prompt, 2)}"
    parts = [f"Question: {scenario.question.strip()}"]
    shown = turns[-COMPACT_TURNS:]
    if shown:
        said = [gist(" ".join(t["text"].split()), COMPACT_TURN_CHARS) for t in shown]
        parts.append("So far:\n" + "\n".join(f"- {text}" for text in said))
    parts.append(cue)
    messages = [{"role": "user", "content": "\n\n".join(parts)}]
    return Prompt(system=system, messages=messages, omitted=len(turns) - len(shown))


def _build_shared(
    speaker: Persona,
    scenario: Scenario,
    cast: dict[str, Persona],
    turns: list[dict],
    instruction: str,
    max_prompt_tokens: int | None,
) -> Prompt:
    """Shared part first, word for word the same for every speaker; the speaker's own last."""
    own = (
        f"---\nNow it is your contribution. You are {speaker.name}.\n\n"
        f"{speaker.prompt.strip()}\n\n{instruction}"
    )
    brief = _brief(scenario, cast)
    summary, omitted = "", 0
    if max_prompt_tokens is not None:
        fixed = len(RULES) + len(brief) + len(own) + 2 * TURN_OVERHEAD_CHARS
        summary, turns, omitted = fold(turns, max_prompt_tokens * FIT_CHARS_PER_TOKEN - fixed, cast)
    parts = [brief]
    if summary:
        parts.append(summary)
    if turns:
        parts.append(
            "The deliberation so far:\n\n"
            + "\n\n".join(f"{_label(t, cast)} {t['text']}" for t in turns)
        )
    parts.append(own)
    messages = [{"role": "user", "content": "\n\n".join(parts)}]
    return Prompt(system=RULES, messages=messages, omitted=omitted, summary_chars=len(summary))


def opening_instruction(moderator: Persona, scenario: Scenario) -> Instruction:
    return _instruction(
        f"{TURN_MARKER}, {moderator.name}. Open the deliberation: introduce the question and "
        "the panelists in a few sentences and invite the first speaker. Do not answer the "
        "question yourself.",
        "Welcome the panel and put the question to them, in two sentences.",
    )


def turn_instruction(
    speaker: Persona, round_no: int, rounds: int, motion: str | None = None
) -> Instruction:
    stage = (
        "final round: state your position and what would change your mind"
        if (round_no == rounds)
        else f"round {round_no} of {rounds}"
    )
    text = f"{TURN_MARKER}, {speaker.name} ({stage}). Give your contribution now."
    cue = (
        "Your final view, in two or three sentences?"
        if round_no == rounds
        else "What do you think? Answer in two or three sentences."
    )
    # The compact cue does not ask for a stance: SmolLM2 wrote no readable stance line in any of
    # its turns measured, and echoed the motion instead; its turns record the stance missing.
    return _instruction(f"{text} {stance.instruction(motion)}" if motion else text, cue)


def interjection_instruction(moderator: Persona, round_no: int) -> Instruction:
    return _instruction(
        f"{TURN_MARKER}, {moderator.name}. Round {round_no - 1} is over. In two or three "
        "sentences, name the sharpest unresolved disagreement so far and put a pointed "
        f"question to a specific panelist for round {round_no}.",
        "Where do they disagree most? Say it in two sentences, then ask one of them a question.",
    )


def selection_instruction(candidates: list[Persona]) -> str:
    listing = "\n".join(f"- {p.id}: {p.name}" for p in candidates)
    return (
        f"{SELECT_MARKER} You are moderating; choose one panelist from this list whose "
        f"contribution would move the deliberation forward most now:\n{listing}\n"
        "Answer with the panelist's id only."
    )


def verdict_instruction(scenario: Scenario, cast: dict[str, Persona]) -> str:
    positions = ", ".join(f'"{pid}": "..."' for pid in scenario.participants)
    return (
        f"{TURN_MARKER}, {cast[scenario.moderator].name}. The deliberation is over. "
        f"{VERDICT_MARKER} as a fair synthesis of what was actually said. "
        "Return only one JSON object, no other text, with exactly these keys:\n"
        '{"summary": "...", "agreements": ["..."], "disagreements": ["..."], '
        f'"open_questions": ["..."], "positions": {{{positions}}}}}\n'
        "Each position is that panelist's final stance in one or two sentences."
    )


def verdict_retry_instruction(error: str, instruction: str) -> str:
    """Ask again, repeating the whole instruction: small models forget what 'above' was."""
    return f"That reply could not be used as the verdict ({error}).\n\n{instruction}"


def pick_speaker(reply: str, candidates: list[Persona]) -> str | None:
    """The candidate a moderator's reply names (by id or display name), or None.

    Only the first candidate mentioned counts; text outside the candidate list is ignored, so
    no reply can route the debate anywhere but to one of the candidates.
    """
    text = reply.lower()
    best: tuple[int, str] | None = None
    for persona in candidates:
        for needle in (persona.id.lower(), persona.name.lower()):
            match = re.search(rf"(?<![\w-]){re.escape(needle)}(?![\w-])", text)
            if match and (best is None or match.start() < best[0]):
                best = (match.start(), persona.id)
    return best[1] if best else None


def extract_json_object(text: str) -> dict:
    """The first JSON object in ``text``, allowing code fences and prose around it."""
    cleaned = re.sub(r"```(?:json)?", "", text)
    start = cleaned.find("{")
    if start < 0:
        raise ValueError("no JSON object found")
    # strict=False: a raw line break inside a string (small models under a grammar write them)
    # is read as the text it plainly is.
    obj, _ = json.JSONDecoder(strict=False).raw_decode(cleaned[start:])
    if not isinstance(obj, dict):
        raise ValueError("the JSON is not an object")
    return obj


def loop_reframe_instruction(moderator: Persona, pattern: str, names: list[str]) -> str:
    """First rung of the ladder: name the pattern, reframe, ask for positions and reasons."""
    return (
        f"{TURN_MARKER}, {moderator.name}. The deliberation is stuck: {pattern}. Step in as "
        "moderator. Say plainly in one sentence what is happening, then reframe: this is a "
        "deliberation about principles and trade-offs, not a request for operational detail, "
        "and no one is asked to help with anything harmful. Ask each of "
        f"{', '.join(names)} to state a position and one reason for it."
    )


def loop_abstract_instruction(moderator: Persona, pattern: str, names: list[str]) -> str:
    """Second rung: restate the question one level more abstract."""
    return (
        f"{TURN_MARKER}, {moderator.name}. The panel is still stuck ({pattern}). Restate the "
        "question one level more abstract, as a question about values, principles or evidence "
        "rather than specifics, in two or three sentences, and invite "
        f"{', '.join(names)} to answer that question."
    )
