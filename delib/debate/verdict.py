"""The moderator's closing verdict: its shape and how a model's reply is read into it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from delib.debate.prompts import extract_json_object
from delib.library.personas import Persona


class Verdict(BaseModel):
    """A fair synthesis of the debate, written by the moderator's model."""

    model_config = ConfigDict(extra="ignore")  # extra commentary keys do not spoil a verdict

    summary: str = Field(min_length=1)
    agreements: list[str]
    disagreements: list[str]
    open_questions: list[str]
    positions: dict[str, str] = Field(description="Participant id -> final position")


def parse_verdict(text: str, participants: list[Persona]) -> Verdict:
    """Read a verdict from a model reply; raise ValueError saying what is wrong."""
    data = extract_json_object(text)
    positions = data.get("positions")
    if isinstance(positions, dict):
        data["positions"] = _normalise_positions(positions, participants)
    try:
        verdict = Verdict.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"field '{field}': {first['msg']}") from None
    missing = [p.id for p in participants if p.id not in verdict.positions]
    if missing:
        raise ValueError(f"positions lacks {', '.join(missing)}")
    return verdict


def _normalise_positions(positions: dict, participants: list[Persona]) -> dict:
    """Accept display names or ids in any case as keys; keep only participants."""
    lookup = {}
    for persona in participants:
        lookup[persona.id.lower()] = persona.id
        lookup[persona.name.lower()] = persona.id
    result = {}
    for key, value in positions.items():
        pid = lookup.get(str(key).strip().lower())
        if pid is not None:
            result[pid] = value if isinstance(value, str) else str(value)
    return result
