"""Run folders: ``<archive>/<run-id>/`` with turns.jsonl, manifest.json and transcript.md.

``turns.jsonl`` is appended and flushed (and fsynced) as each turn or event happens, so a run
that dies keeps everything it finished. ``manifest.json`` is written when the run starts and
rewritten atomically when it ends. The folders are the source of truth.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from datetime import UTC, datetime
from pathlib import Path

from delib.errors import InputError, UnknownIdError

DEFAULT_ARCHIVE = "transcripts"
ARCHIVE_ENV = "DELIB_TRANSCRIPTS"
TURNS_FILE = "turns.jsonl"
MANIFEST_FILE = "manifest.json"
TRANSCRIPT_FILE = "transcript.md"


def archive_dir(flag: Path | None) -> Path:
    """``--archive`` if given, else ``$DELIB_TRANSCRIPTS``, else ``./transcripts``."""
    chosen = flag if flag is not None else Path(os.environ.get(ARCHIVE_ENV) or DEFAULT_ARCHIVE)
    return chosen.expanduser().absolute()


def new_run_id(scenario_id: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{scenario_id}-{secrets.token_hex(2)}"


class RunFolder:
    """One run's folder, open for appending."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_id = path.name
        self._turns = None

    @classmethod
    def create(cls, archive: Path, scenario_id: str) -> RunFolder:
        try:
            archive.mkdir(parents=True, exist_ok=True)
            for _ in range(5):
                path = archive / new_run_id(scenario_id)
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    continue
            else:  # pragma: no cover - five random collisions in one second
                raise InputError(f"could not create a new run folder in {archive}")
        except OSError as exc:
            raise InputError(f"cannot write to archive folder {archive}: {exc.strerror}") from None
        return cls(path)

    def append(self, record: dict) -> None:
        """Add one turn or event line; it is on disk when this returns."""
        if self._turns is None:
            self._turns = open(self.path / TURNS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self._turns.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._turns.flush()
        os.fsync(self._turns.fileno())

    def write_manifest(self, manifest: dict) -> None:
        _atomic_write(self.path / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False))

    def write_transcript(self, text: str) -> None:
        _atomic_write(self.path / TRANSCRIPT_FILE, text)

    def close(self) -> None:
        if self._turns is not None:
            self._turns.close()
            self._turns = None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_records(folder: Path) -> list[dict]:
    """Every turn and event of a run; a truncated last line (a crash mid-write) is skipped."""
    path = folder / TURNS_FILE
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                warnings.warn(f"{path}: ignoring a truncated last line", stacklevel=2)
            else:
                raise InputError(f"{path}: line {number} is not valid JSON") from None
    return records


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: no {MANIFEST_FILE}; not a delib run folder") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: corrupt manifest ({exc.msg} at line {exc.lineno})") from None


def run_folders(archive: Path) -> list[Path]:
    if not archive.exists():
        raise InputError(
            f"archive folder {archive} does not exist; pass --archive DIR or set {ARCHIVE_ENV}"
        )
    return sorted(
        (p for p in archive.iterdir() if p.is_dir() and (p / MANIFEST_FILE).exists()),
        key=lambda p: p.name,
        reverse=True,
    )


def find_run(archive: Path, wanted: str) -> Path:
    """A run folder by id or unique id prefix."""
    folders = run_folders(archive)
    exact = [p for p in folders if p.name == wanted]
    if exact:
        return exact[0]
    matches = [p for p in folders if p.name.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(p.name for p in matches[:5])
        raise InputError(f"run prefix '{wanted}' is ambiguous: {names}; give more of the id")
    recent = [p.name for p in folders[:5]]
    raise UnknownIdError("run", wanted, recent, hint=f"in {archive}; see 'delib transcripts list'")
