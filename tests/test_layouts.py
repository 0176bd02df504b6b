"""The compact prompt layout (the embedded model's): short persona, the question, the latest
turns without labels, a short cue; verdicts and speaker choices keep their full instruction."""

from __future__ import annotations

from delib.debate import prompts
from delib.library.personas import persona_library
from delib.library.scenarios import scenario_library


def _setup():
    scenario = scenario_library().get("corrigibility").item
    personas = persona_library()
    cast = {pid: personas.get(pid).item for pid in [scenario.moderator, *scenario.participants]}
    return scenario, cast


def _turn(i: int, speaker: str, text: str) -> dict:
    return {"index": i, "speaker": speaker, "text": text, "round": 1, "role": "participant"}


def test_compact_turn_prompt_is_short_unlabelled_and_ends_with_the_cue():
    scenario, cast = _setup()
    speaker = cast[scenario.participants[0]]
    other = cast[scenario.participants[1]]
    turns = [_turn(i, other.id, f"Point number {i} about deference.") for i in range(9)]
    instruction = prompts.turn_instruction(speaker, 1, 2, scenario.motion)
    prompt = prompts.build(speaker, scenario, cast, turns, instruction, None, prompts.COMPACT)
    (message,) = prompt.messages
    text = message["content"]
    assert text.startswith(f"Question: {scenario.question.strip()}")
    assert text.endswith(instruction.cue) and prompts.TURN_MARKER not in text
    assert other.name not in text  # no labels to copy
    assert "Point number 8" in text and "Point number 2" not in text  # the latest six
    assert prompt.omitted == 3
    assert prompt.system.startswith(f"You are {speaker.name}, {speaker.role}.")
    assert len(prompt.system) < len(speaker.prompt) + len(prompts.RULES)
    # The full instruction (with the stance request) is what other layouts send.
    full = prompts.build(speaker, scenario, cast, turns, instruction, None, prompts.PERSONA_FIRST)
    assert "STANCE" in full.messages[-1]["content"] and "STANCE" not in text


def test_compact_keeps_the_full_instruction_where_there_is_no_cue():
    scenario, cast = _setup()
    moderator = cast[scenario.moderator]
    verdict = prompts.verdict_instruction(scenario, cast)
    prompt = prompts.build(moderator, scenario, cast, [], verdict, None, prompts.COMPACT)
    assert prompts.VERDICT_MARKER in prompt.messages[-1]["content"]
    opening = prompts.opening_instruction(moderator, scenario)
    prompt = prompts.build(moderator, scenario, cast, [], opening, None, prompts.COMPACT)
    assert prompt.messages[-1]["content"].endswith(opening.cue)
