"""The folder archive: one folder per run (``run_folder.RunFolder``), an SQLite index beside
them (``index.Index``), and each sweep's record and ledger under ``sweeps/<name>/``."""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from delib.archive.reading import (
    find_run,
    is_locked,
    read_manifest,
    read_records,
    require_archive,
    run_folders,
)
from delib.archive.run_folder import CHECKPOINT_FILE, RunFolder
from delib.archive.store import sweep_tag
from delib.errors import DelibError, InputError
from delib.records import now

if TYPE_CHECKING:
    from delib.archive.index import Hit

SWEEPS_DIR = "sweeps"
SPEC_FILE = "sweep.json"
LEDGER_FILE = "attempts.jsonl"


class FolderStore:
    """The folder archive: one folder per run, an SQLite index beside them."""

    kind = "folder"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)

    def __repr__(self) -> str:
        return f"FolderStore({self.location!r})"

    def close(self) -> None:
        pass

    # --- runs --------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_dir()

    def require(self) -> FolderStore:
        require_archive(self.path)
        return self

    def folder(self, run_id: str) -> Path:
        return self.path / run_id

    def find(self, wanted: str) -> str:
        return find_run(self.path, wanted).name

    def manifest(self, run_id: str) -> dict:
        return read_manifest(self.path / run_id)

    def records(self, run_id: str) -> list[dict]:
        return read_records(self.path / run_id)

    def running(self, run_id: str) -> bool:
        return is_locked(self.path / run_id)

    def has_checkpoints(self, run_id: str) -> bool:
        return (self.path / run_id / CHECKPOINT_FILE).exists()

    def run_ids(self) -> list[str]:
        """Every run, newest first."""
        return [f.name for f in run_folders(self.path)] if self.path.is_dir() else []

    def manifests(self) -> Iterator[tuple[str, dict]]:
        """Every readable manifest (a damaged run is skipped: ``transcripts list`` names it)."""
        for run_id in self.run_ids():
            try:
                yield run_id, self.manifest(run_id)
            except DelibError:
                continue

    def sweep_manifests(self, name: str, cell: str | None = None) -> Iterator[tuple[str, dict]]:
        """The manifests of one sweep's runs (or one cell's), found through the index."""
        for row in self.sweep_runs(name, cell):
            try:
                manifest = self.manifest(row["run_id"])
            except DelibError:
                continue
            tag = sweep_tag(manifest)
            if tag and tag.get("name") == name and cell in (None, tag["cell"]):
                yield row["run_id"], manifest

    def sweep_runs(self, name: str, cell: str | None = None) -> list[dict]:
        """One sweep's runs (or one cell's) as the index has them, oldest first: run id,
        cell, started, stop reason, error; no manifest is read but those changed since."""
        if not self.exists():
            return []
        index, _ = self.index()
        with index:
            return index.sweep_runs(name, cell)

    def create_run(self, scenario_id: str) -> RunFolder:
        return RunFolder.create(self.path, scenario_id)

    def open_run(self, run_id: str) -> RunFolder:
        return RunFolder(self.path / run_id)

    def delete(self, run_id: str) -> None:
        from delib.archive.index import Index

        shutil.rmtree(self.path / run_id)
        with Index.open(self.path) as index:
            index.forget(run_id)

    def index(self) -> Any:
        """The SQLite index, brought up to date (with the warnings of runs it skipped)."""
        from delib.archive.index import Index

        index = Index.open(self.require().path)
        return index, index.sync()

    def listing(self, **filters: Any) -> tuple[list[dict], list[str]]:
        index, problems = self.index()
        with index:
            return index.runs(**filters), problems

    def search(self, query: str, limit: int) -> tuple[list[Hit], list[str]]:
        index, problems = self.index()
        with index:
            return index.search(query, limit), problems

    def import_run(self, manifest: dict, records: list[dict]) -> None:
        """Add a finished copy of a run from another store (``archive copy``)."""
        from delib.archive.index import Index
        from delib.archive.markdown import markdown

        folder = self.path / manifest["run_id"]
        if folder.exists():
            raise InputError(f"run {manifest['run_id']} is already in {self.location}")
        self.path.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
        handle = RunFolder(folder)
        handle.rewrite(records)
        handle.write_manifest(manifest)
        handle.write_transcript(markdown(manifest, records))
        handle.close()
        with Index.open(self.path) as index:
            index.index_folder(folder)

    # --- sweeps ------------------------------------------------------------------------------
    def _sweep_dir(self, name: str) -> Path:
        return self.path / SWEEPS_DIR / name

    def save_sweep(self, name: str, data: dict) -> None:
        folder = self._sweep_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SPEC_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    def sweep_record(self, name: str) -> dict | None:
        """The sweep as last run (``save_sweep``), or None; an unreadable one is an error."""
        path = self._sweep_dir(name) / SPEC_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable sweep record ({exc})") from None

    def sweep_names(self) -> list[str]:
        root = self.path / SWEEPS_DIR
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / SPEC_FILE).exists())

    def note(self, name: str, entry: dict) -> None:
        """Append to the sweep's ledger (one process writes it: ``SweepLock``)."""
        folder = self._sweep_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / LEDGER_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"at": now(), **entry}) + "\n")

    def ledger(self, name: str, cell: str | None = None) -> list[dict]:
        """The sweep's attempts (or one cell's), oldest first."""
        path = self._sweep_dir(name) / LEDGER_FILE
        if not path.exists():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a crash
            if isinstance(entry, dict) and isinstance(entry.get("cell"), str):
                if cell is None or entry["cell"] == cell:
                    entries.append(entry)
        return entries

    def limits(self) -> Any:
        """Each server's ``max_concurrency``, for the runs of this process."""
        from delib.models.endpoints import Limits

        return Limits()

    def sweep_lock(self, name: str) -> Any:
        """Held while one ``sweep run`` works on the sweep here (a flock)."""
        return SweepLock(self._sweep_dir(name), name, self.location)


class SweepLock:
    """Held while one ``sweep run`` works on a sweep in a folder archive (a database leases
    each cell instead: ``PgStore.claim``)."""

    def __init__(self, folder: Path, name: str, archive: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.handle = open(folder / "lock", "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise InputError(
                f"sweep '{name}' is already running on {archive} in another process; "
                "wait for it, or see `delib sweep status`"
            ) from None

    def release(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
