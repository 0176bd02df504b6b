"""Personas: who speaks in a debate, in what voice, on which model."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from delib.library.files import Library, make_library

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


class Persona(BaseModel):
    """One voice in a debate, read from ``personas/<id>.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_PATTERN, max_length=64, description="Stable id used by scenarios")
    name: str = Field(min_length=1, max_length=80, description="Display name in transcripts")
    role: str = Field(min_length=1, max_length=200, description="One line: who this is")
    prompt: str = Field(min_length=1, description="How this persona thinks and speaks")
    endpoint: str | None = Field(default=None, description="Named endpoint from delib.toml")
    model: str | None = Field(default=None, min_length=1, description="Model name override")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)


def persona_library(extra: Path | None = None, cwd: Path | None = None) -> Library[Persona]:
    """Personas shipped with delib, plus ``./personas``, plus ``extra``."""
    return make_library("personas", Persona, extra, cwd)
