"""Structured output: asking a server for JSON that fits a schema, in the dialect it speaks.

- ``json_schema``: OpenAI's ``{"type": "json_schema", "json_schema": {"name", "schema",
  "strict"}}`` (OpenAI, vLLM, llama.cpp's ``llama-server``, recent Ollama);
- ``json_object``: ``{"type": "json_object", "schema": ...}`` (llama-cpp-python's server,
  which the embedded model runs on: grammar-constrained decoding from the schema).

An endpoint's ``structured_output`` setting picks one, or ``off``; ``auto`` starts with
``json_schema`` and steps down when the server rejects the request (an adaptation in the
manifest), so a server without support costs one rejected request per run. A reply is still
validated: a server that accepts the format but returns something else falls back to
validate-and-retry.
"""

from __future__ import annotations

from typing import Any

DIALECTS = ("json_schema", "json_object")
# Words in a 400/422 that mean "this server does not take that response_format".
REJECTION_MARKERS = ("response_format", "json_schema", "json_object", "schema", "format")


def response_format(dialect: str, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    if dialect == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        }
    return {"type": "json_object", "schema": schema}


def next_dialect(current: str, setting: str) -> str:
    """What to try after ``current`` was rejected: the next dialect under ``auto``, else off."""
    if setting == "auto" and current in DIALECTS and current != DIALECTS[-1]:
        return DIALECTS[DIALECTS.index(current) + 1]
    return "off"


def verdict_schema(participants: list[str]) -> dict[str, Any]:
    """The verdict's JSON schema, with a position required for each participant by id."""
    text = {"type": "string", "minLength": 1}
    strings = {"type": "array", "items": text}
    return {
        "type": "object",
        "properties": {
            "summary": text,
            "agreements": strings,
            "disagreements": strings,
            "open_questions": strings,
            "positions": {
                "type": "object",
                "properties": dict.fromkeys(participants, text),
                "required": list(participants),
                "additionalProperties": False,
            },
        },
        "required": ["summary", "agreements", "disagreements", "open_questions", "positions"],
        "additionalProperties": False,
    }


def speaker_schema(candidates: list[str]) -> dict[str, Any]:
    """The moderator's choice of the next speaker: one of the candidates' ids."""
    return {
        "type": "object",
        "properties": {"speaker": {"type": "string", "enum": list(candidates)}},
        "required": ["speaker"],
        "additionalProperties": False,
    }
