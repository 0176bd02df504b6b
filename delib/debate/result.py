"""How a run ended: ``RunResult``, with everything the run said."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from delib.debate.state import StopReason
from delib.errors import DelibError
from delib.records import Event, Manifest, TokenTotals, Turn


class RunFailed(DelibError):
    """Raised by ``RunResult.raise_for_error`` for a run that ended in an error."""


@dataclass
class RunResult:
    """How a run ended, with everything it said."""

    run_id: str
    folder: Path | None  # None for a run kept in a database
    stop_reason: StopReason
    error: BaseException | None  # the exception that ended the run, if one did
    turns: list[Turn]
    events: list[Event]
    tokens: TokenTotals
    verdict: dict | None  # the validated verdict, or {"valid": False, "text": ...}
    manifest: Manifest
    archive: str = ""  # where the run is kept: the archive folder or the database's address

    @property
    def where(self) -> str:
        """The run's folder, or the run in its database."""
        return str(self.folder) if self.folder else f"run {self.run_id} in {self.archive}"

    @property
    def error_message(self) -> str | None:
        return self.manifest.get("error")

    @property
    def verdict_valid(self) -> bool | None:
        return self.verdict.get("valid") if self.verdict else None

    def raise_for_error(self) -> RunResult:
        """Raise the error that ended the run, if any; else return the result."""
        if self.error is not None:
            raise self.error
        if self.stop_reason is StopReason.error:
            raise RunFailed(self.error_message or "the run failed")
        return self

    def summary(self) -> dict:
        """What ``delib run --json`` prints."""
        return {
            "run_id": self.run_id,
            "folder": str(self.folder) if self.folder else None,
            "stop_reason": self.stop_reason.value,
            "error": self.error_message,
            "turns": len(self.turns),
            "events": len(self.events),
            "tokens": self.tokens,
            "verdict_valid": self.verdict_valid,
        }
