"""Scenarios: the question, who deliberates it, and under which rules."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from delib.detect.loops import LoopConfig
from delib.errors import UnknownIdError
from delib.library.files import Library, make_library
from delib.library.personas import ID_PATTERN, Persona

DEFAULT_MODERATOR = "societal-impacts"
DEFAULT_ROUNDS = 2

PersonaId = Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]


class Protocol(StrEnum):
    """How speakers take turns within a round."""

    round_robin = "round_robin"  # participants in the listed order
    simultaneous = "simultaneous"  # all at once, each seeing only earlier rounds
    moderator_selects = "moderator_selects"  # the moderator's model picks who speaks next


class Limits(BaseModel):
    """Hard bounds on a run; the CLI can tighten or loosen them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rounds: int | None = Field(
        default=None, ge=1, le=200, description="Ceiling on rounds, whatever --rounds asks for"
    )
    token_budget: int | None = Field(
        default=None, ge=100, description="Total tokens (prompt + completion) the run may use"
    )
    max_tokens: int | None = Field(
        default=None, ge=1, le=32768, description="Reply length cap per turn"
    )
    verdict_tokens: int | None = Field(
        default=None,
        ge=16,
        le=32768,
        description="Reply length cap for the closing verdict (default: 800, or twice the "
        "moderator's turn cap if that is more)",
    )


class Scenario(BaseModel):
    """A question to deliberate, read from ``scenarios/<id>.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_PATTERN, max_length=64)
    title: str = Field(min_length=1, max_length=200)
    question: str = Field(min_length=1, description="The question put to the panel")
    background: str = Field(default="", description="Context every participant is given")
    motion: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="A claim the panel can agree or disagree with; participants then end each "
        "turn with a stance line (delib.detect.stance)",
    )
    source_seed: str = Field(min_length=1, description="Seed text the scenario draws on")
    moderator: PersonaId = DEFAULT_MODERATOR
    participants: list[PersonaId] = Field(min_length=2, max_length=12)
    protocol: Protocol = Protocol.round_robin
    rounds: int = Field(default=DEFAULT_ROUNDS, ge=1, le=200)
    interjections: bool = Field(
        default=True, description="Whether the moderator speaks between rounds"
    )
    limits: Limits = Field(default_factory=Limits)
    loops: LoopConfig = Field(default_factory=LoopConfig)
    endpoint: str | None = None
    model: str | None = Field(default=None, min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)

    @model_validator(mode="after")
    def _check_people(self) -> Scenario:
        if len(set(self.participants)) != len(self.participants):
            raise ValueError("participants must not repeat")
        if self.moderator in self.participants:
            raise ValueError(f"the moderator '{self.moderator}' cannot also be a participant")
        return self


def scenario_library(extra: Path | None = None, cwd: Path | None = None) -> Library[Scenario]:
    """Scenarios shipped with delib, plus ``./scenarios``, plus ``extra``."""
    return make_library("scenarios", Scenario, extra, cwd)


def cast_for(
    scenario: Scenario,
    scenario_path: Path | str,
    personas: Library[Persona],
    extra: Iterable[str] = (),
) -> list[str]:
    """Check that every persona the scenario names exists, in the library or among ``extra``
    (personas given in code); return moderator + participants."""
    known = sorted({*personas.ids(), *extra})
    for pid in [scenario.moderator, *scenario.participants]:
        if pid not in known:
            raise UnknownIdError(
                "persona", pid, known, hint=f"named by scenario file {scenario_path}"
            )
    return [scenario.moderator, *scenario.participants]
