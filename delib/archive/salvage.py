"""A run folder whose manifest is gone: a manifest rebuilt from its records.

``turns.jsonl`` is the record of truth; ``manifest.json`` summarises it and keeps what was
asked. When the manifest is deleted, ``delib transcripts reindex`` writes a new one from the
records alone: the speakers, their models, the counts and tokens. What only the old manifest
knew (the request, the scenario's question, the stop reason) is marked unknown, so the run can
be read, searched and exported, but not resumed.
"""

from __future__ import annotations

import re
from pathlib import Path

from delib.archive.reading import read_records
from delib.archive.run_folder import MANIFEST_FILE, TURNS_FILE, RunFolder
from delib.records import SCHEMA_VERSION, token_totals

REBUILT_ERROR = "manifest.json was missing; rebuilt from turns.jsonl by `delib transcripts reindex`"
_RUN_ID = re.compile(r"^\d{8}-\d{6}-(?P<scenario>.+)-[0-9a-f]{4}$")


def needs_manifest(folder: Path) -> bool:
    return not (folder / MANIFEST_FILE).exists() and (folder / TURNS_FILE).exists()


def rebuilt_manifest(folder: Path) -> dict:
    """A manifest from the folder's records (an InputError if they cannot be read)."""
    records = read_records(folder)
    turns = [r for r in records if r["type"] == "turn"]
    match = _RUN_ID.match(folder.name)
    scenario = match.group("scenario") if match else "unknown"
    personas: dict[str, dict] = {}
    for turn in turns:
        personas.setdefault(
            turn["speaker"],
            {
                "id": turn["speaker"],
                "name": turn["name"],
                "role": turn["role"],
                "model": str(turn.get("model") or "unknown"),
                "endpoint": str(turn.get("endpoint") or "unknown"),
            },
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": folder.name,
        "rebuilt": True,
        "scenario": {"id": scenario, "title": scenario, "question": "(unknown: manifest rebuilt)"},
        "protocol": "unknown",
        "rounds": max((t["round"] for t in turns), default=0),
        "personas": list(personas.values()),
        "started_at": turns[0].get("started_at") if turns else None,
        "ended_at": turns[-1].get("started_at") if turns else None,
        "stop_reason": None,
        "error": REBUILT_ERROR,
        "turns": len(turns),
        "events": len(records) - len(turns),
        "tokens": token_totals(records),
        "verdict": None,
    }


def rebuild(folder: Path) -> dict:
    """Write the rebuilt manifest into the folder; returns it."""
    manifest = rebuilt_manifest(folder)
    RunFolder(folder).write_manifest(manifest)
    return manifest
