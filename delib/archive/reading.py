"""Reading a folder archive: its run folders, and each run's records and manifest, with what
is wrong with a damaged one (``archive.RunFolder`` writes them)."""

from __future__ import annotations

import fcntl
import json
import warnings
from pathlib import Path

from delib.archive.run_folder import ARCHIVE_ENV, LOCK_FILE, MANIFEST_FILE, TURNS_FILE
from delib.errors import InputError, UnknownIdError


def is_locked(folder: Path) -> bool:
    """True while a process is running this run."""
    path = folder / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def read_records(folder: Path) -> list[dict]:
    """Every turn and event of a run; a truncated last line (a crash mid-write) is skipped
    with a warning.

    Lines are split on ``\\n`` alone: a reply may hold U+2028, U+0085 and other characters
    that ``str.splitlines`` would break a record on, and JSON escapes every real newline.
    """
    path = folder / TURNS_FILE
    if not path.exists():
        return []
    records = []
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the file ends with a newline, as it should
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            problem = record_problem(record)
        except UnicodeDecodeError:
            problem = "not UTF-8"
        except json.JSONDecodeError as exc:
            problem = f"not JSON: {exc.msg}"
        if problem is None:
            records.append(record)
        elif number == len(lines) and not data.endswith(b"\n"):
            warnings.warn(
                f"{path}: ignoring a truncated last line (the run died mid-write)", stacklevel=2
            )
        else:
            raise InputError(
                f"{path}: line {number} is not a valid record ({problem}); "
                "mend or remove that line to read the run"
            )
    return records


def record_problem(record: object) -> str | None:
    """What keeps a turns.jsonl record from being read, or None: the fields every reader relies
    on, with the right types."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    kind = record.get("type")
    if kind == "turn":
        for key in ("index", "round"):
            if not isinstance(record.get(key), int):
                return f"a turn without a whole-number {key!r}"
        for key in ("speaker", "name", "role", "kind", "text"):
            if not isinstance(record.get(key), str):
                return f"a turn without a text {key!r}"
        return None
    if kind == "event":
        return None if isinstance(record.get("event"), str) else "an event without its name"
    return "neither a turn nor an event ('type')"


def read_manifest(folder: Path) -> dict:
    """A run's manifest; an InputError naming the run if it is missing, unreadable or not a
    manifest."""
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        hint = (
            "; `delib transcripts reindex` rebuilds it from turns.jsonl"
            if (folder / TURNS_FILE).exists()
            else "; not a delib run folder"
        )
        raise InputError(f"{folder}: no {MANIFEST_FILE}{hint}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: corrupt manifest (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: corrupt manifest ({exc.msg} at line {exc.lineno})") from None
    problem = manifest_problem(manifest)
    if problem:
        raise InputError(f"{path}: not a delib manifest ({problem})")
    return manifest


def manifest_problem(manifest: object) -> str | None:
    """What makes this not a manifest every reader can use, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    scenario = manifest.get("scenario")
    if not isinstance(scenario, dict) or not all(
        isinstance(scenario.get(k), str) for k in ("id", "title", "question")
    ):
        return "no scenario with an id, title and question"
    personas = manifest.get("personas")
    if not isinstance(personas, list) or not all(
        isinstance(p, dict)
        and all(isinstance(p.get(k), str) for k in ("id", "name", "model", "endpoint"))
        for p in personas
    ):
        return "no list of personas with id, name, model and endpoint"
    if not isinstance(manifest.get("protocol"), str) or not isinstance(manifest.get("rounds"), int):
        return "no protocol and rounds"
    return None


def require_archive(archive: Path) -> Path:
    """``archive`` if it is a folder; otherwise an error saying how to point at one."""
    if not archive.is_dir():
        raise InputError(
            f"archive folder {archive} does not exist; pass --archive DIR or set {ARCHIVE_ENV}"
        )
    return archive


def run_folders(archive: Path) -> list[Path]:
    require_archive(archive)
    return sorted(
        (
            p
            for p in archive.iterdir()
            if p.is_dir() and ((p / MANIFEST_FILE).exists() or (p / TURNS_FILE).exists())
        ),
        key=lambda p: p.name,
        reverse=True,
    )


def find_run(archive: Path, wanted: str) -> Path:
    """A run folder by id or unique id prefix."""
    if not wanted.strip():
        raise InputError("an empty run id matches nothing; see `delib transcripts list`")
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
