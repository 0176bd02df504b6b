"""The archive's SQLite index: runs and turns, with full-text search over what was said.

The run folders are the source of truth; the index (``<archive>/index.sqlite``) only makes them
fast to list and search. A running debate adds its turns as they finish. Every reader first
calls ``sync``: each folder's stamp (manifest mtime and turns.jsonl size) is compared with the
indexed one, and runs that changed, appeared or vanished are re-read from their folders, so a
run killed before it could update the index is caught up the next time anyone looks.
``rebuild`` starts over from the folders alone (``delib transcripts reindex``).

The database runs in WAL mode with a busy timeout, so several runs (and readers) can share one
archive at once. Schema changes are numbered migrations, applied in order inside an immediate
transaction that re-reads ``user_version`` first: running them twice, or from two processes at
once, is harmless.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from delib.archive import salvage
from delib.archive.indexschema import MIGRATIONS
from delib.archive.reading import (
    is_locked,
    read_manifest,
    read_records,
    require_archive,
    run_folders,
)
from delib.archive.run_folder import MANIFEST_FILE, TURNS_FILE
from delib.archive.store import sweep_tag
from delib.errors import DelibError, InputError

INDEX_FILE = "index.sqlite"
# Another process writing (a run adding a turn) holds the lock for milliseconds; wait for it.
BUSY_TIMEOUT_MS = 10_000
# Markers around a search hit inside a snippet (control characters no turn contains).
HIT_START, HIT_END = "\x02", "\x03"
SNIPPET_TOKENS = 16


@dataclass
class Hit:
    run_id: str
    index: int
    speaker: str
    name: str
    round: int
    snippet: str  # with HIT_START/HIT_END around matched words


def stamp(folder: Path | str) -> str:
    """What changes when a run folder changes: manifest mtime and turns.jsonl size."""
    parts = []
    for name in (MANIFEST_FILE, TURNS_FILE):
        try:
            st = os.stat(f"{folder}/{name}")
            parts.append(f"{st.st_mtime_ns}:{st.st_size}")
        except FileNotFoundError:
            parts.append("-")
    return "|".join(parts)


def _stamps(archive: Path) -> dict[str, str]:
    """Each run folder's name and stamp (``reading.run_folders``' folders: those with a
    manifest or a turns file), in two ``stat`` calls a folder: a sweep's status syncs the
    index on every call, over every run in the archive."""
    found = {}
    require_archive(archive)
    with os.scandir(archive) as entries:
        for entry in entries:
            if entry.is_dir():
                mark = stamp(entry.path)
                if mark != "-|-":
                    found[entry.name] = mark
    return found


def _run_row(manifest: dict, records: list[dict] | None, folder_stamp: str | None) -> dict:
    models = sorted({p["model"] for p in manifest.get("personas", []) if p.get("model")})
    endpoints = sorted({p["endpoint"] for p in manifest.get("personas", []) if p.get("endpoint")})
    tokens = (manifest.get("tokens") or {}).get("total")
    turns = manifest.get("turns")
    events = manifest.get("events")
    if records is not None:
        turns = sum(1 for r in records if r.get("type") == "turn")
        events = sum(1 for r in records if r.get("type") == "event")
        if tokens is None:
            tokens = sum(
                r["tokens"]["prompt"] + r["tokens"]["completion"]
                for r in records
                if r.get("tokens")
            )
    return {
        "run_id": manifest["run_id"],
        "scenario": manifest["scenario"]["id"],
        "title": manifest["scenario"].get("title"),
        "protocol": manifest.get("protocol"),
        "models": json.dumps(models),
        "endpoints": json.dumps(endpoints),
        "started_at": manifest.get("started_at"),
        "ended_at": manifest.get("ended_at"),
        "stop_reason": manifest.get("stop_reason"),
        "error": manifest.get("error"),
        "tokens": tokens,
        "turns": turns or 0,
        "events": events or 0,
        "resumed": len(manifest.get("resumed") or []),
        "stamp": folder_stamp,
        "sweep": (sweep_tag(manifest) or {}).get("name"),
        "cell": (sweep_tag(manifest) or {}).get("cell"),
    }


def _searchable(text: str) -> str:
    """A turn's text for the full-text index: the snippet markers cannot occur in it (the
    turn itself, in turns.jsonl, keeps them)."""
    return text.replace(HIT_START, " ").replace(HIT_END, " ")


class Index:
    """One archive's index; open it with ``Index.open(archive)``."""

    def __init__(self, archive: Path, conn: sqlite3.Connection) -> None:
        self.archive = archive
        self.conn = conn

    @classmethod
    def open(cls, archive: Path) -> Index:
        path = archive / INDEX_FILE
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            index = cls(archive, conn)
            index.migrate()
        except sqlite3.DatabaseError as exc:
            raise InputError(
                f"{path}: cannot use the index ({exc}); delete the file and run "
                "'delib transcripts reindex' to rebuild it from the run folders"
            ) from None
        return index

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def migrate(self) -> int:
        """Apply the migrations not yet applied; returns the schema version."""
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version >= len(MIGRATIONS):
            return version
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process?
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
        return len(MIGRATIONS)

    # --- writing -----------------------------------------------------------------------------
    def _put_run(self, conn: sqlite3.Connection, row: dict) -> None:
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        conn.execute(f"INSERT OR REPLACE INTO runs ({columns}) VALUES ({marks})", row)

    def _put_turn(self, conn: sqlite3.Connection, run_id: str, turn: dict) -> None:
        conn.execute(
            "DELETE FROM turns_fts WHERE rowid IN "
            "(SELECT rowid FROM turns WHERE run_id = ? AND idx = ?)",
            (run_id, turn["index"]),
        )
        row = conn.execute(
            "INSERT OR REPLACE INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                turn["index"],
                turn.get("round"),
                turn.get("speaker"),
                turn.get("name"),
                turn.get("role"),
                turn.get("kind"),
                turn.get("text", ""),
            ),
        )
        conn.execute(
            "INSERT INTO turns_fts (rowid, text, run_id, idx) VALUES (?, ?, ?, ?)",
            (row.lastrowid, _searchable(turn.get("text", "")), run_id, turn["index"]),
        )

    def _drop(self, conn: sqlite3.Connection, run_id: str) -> None:
        conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        conn.execute(
            "DELETE FROM turns_fts WHERE rowid IN (SELECT rowid FROM turns WHERE run_id = ?)",
            (run_id,),
        )
        conn.execute("DELETE FROM turns WHERE run_id = ?", (run_id,))

    def replace_turns(self, folder: Path, manifest: dict, records: list[dict]) -> None:
        """Index one run from its folder's contents, replacing whatever was there."""
        run_id = folder.name
        with self.transaction() as conn:
            self._drop(conn, run_id)
            self._put_run(conn, _run_row(manifest, records, stamp(folder)))
            for record in records:
                if record.get("type") == "turn":
                    self._put_turn(conn, run_id, record)

    def add_turns(self, folder: Path, manifest: dict, records: list[dict], new: list[dict]) -> None:
        """A running run's row brought up to date, and the turns among ``new`` (records
        written since the run was last indexed) added."""
        with self.transaction() as conn:
            self._put_run(conn, _run_row(manifest, records, stamp(folder)))
            for record in new:
                if record.get("type") == "turn":
                    self._put_turn(conn, folder.name, record)

    def forget(self, run_id: str) -> None:
        with self.transaction() as conn:
            self._drop(conn, run_id)

    def index_folder(self, folder: Path) -> None:
        """Read one run folder and index it (a corrupt manifest raises InputError)."""
        manifest = read_manifest(folder)
        if manifest.get("run_id") != folder.name:
            manifest = {**manifest, "run_id": folder.name}
        records = read_records(folder)
        try:
            self.replace_turns(folder, manifest, records)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{folder}: damaged run ({type(exc).__name__}: {exc})") from None

    def sync(self) -> list[str]:
        """Bring the index in line with the folders; returns one warning per unreadable run."""
        folders = _stamps(self.archive)
        known = {
            row["run_id"]: row["stamp"]
            for row in self.conn.execute("SELECT run_id, stamp FROM runs")
        }
        problems = []
        for gone in set(known) - set(folders):
            self.forget(gone)
        for name in sorted(folders):
            if known.get(name) == folders[name]:
                continue
            try:
                self.index_folder(self.archive / name)
            except DelibError as exc:
                self.forget(name)
                problems.append(str(exc))
        return problems

    def rebuild(self) -> tuple[int, list[str], list[str]]:
        """Drop everything and index every run folder, rebuilding missing manifests from
        their records; returns (runs indexed, problems, runs whose manifest was rebuilt)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM runs")
            conn.execute("DELETE FROM turns")
            conn.execute("DELETE FROM turns_fts")
        problems: list[str] = []
        rebuilt: list[str] = []
        count = 0
        for folder in run_folders(self.archive):
            try:
                if salvage.needs_manifest(folder) and not is_locked(folder):
                    salvage.rebuild(folder)
                    rebuilt.append(folder.name)
                self.index_folder(folder)
                count += 1
            except DelibError as exc:
                problems.append(str(exc))
        return count, problems, rebuilt

    # --- reading -----------------------------------------------------------------------------
    def runs(
        self,
        scenario: str | None = None,
        model: str | None = None,
        stop_reason: str | None = None,
        since: str | None = None,
    ) -> list[dict]:
        """Runs, newest first, with the given filters (all must hold)."""
        where, args = [], []
        if scenario:
            where.append("scenario = ?")
            args.append(scenario)
        if model:
            where.append("EXISTS (SELECT 1 FROM json_each(runs.models) WHERE value = ?)")
            args.append(model)
        if stop_reason:
            if stop_reason == "running":
                where.append("stop_reason IS NULL")
            else:
                where.append("stop_reason = ?")
                args.append(stop_reason)
        if since:
            where.append("started_at >= ?")
            args.append(since)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, run_id DESC"
        rows = []
        for row in self.conn.execute(sql, args):
            item = dict(row)
            item["models"] = json.loads(item["models"])
            item["endpoints"] = json.loads(item["endpoints"])
            for internal in ("stamp", "sweep", "cell"):
                item.pop(internal, None)
            rows.append(item)
        return rows

    def sweep_runs(self, name: str, cell: str | None = None) -> list[dict]:
        """The runs of one sweep (or one cell), oldest first: run id, cell, started, stop
        reason and error, as their manifests say."""
        rows = self.conn.execute(
            "SELECT run_id, cell, started_at, stop_reason, error FROM runs WHERE sweep = ? "
            "AND (? IS NULL OR cell = ?) ORDER BY coalesce(started_at, ''), run_id",
            (name, cell, cell),
        )
        return [dict(row) for row in rows]

    def search(self, query: str, limit: int = 50) -> list[Hit]:
        """Turns matching an FTS5 query (plain words work: all must occur), best first."""
        sql = f"""
            SELECT f.run_id, f.idx, t.speaker, t.name, t.round,
                   snippet(turns_fts, 0, '{HIT_START}', '{HIT_END}', '…', {SNIPPET_TOKENS}) AS s
            FROM turns_fts AS f JOIN turns AS t ON t.rowid = f.rowid
            WHERE turns_fts MATCH ? ORDER BY rank, f.run_id DESC, f.idx LIMIT ?
        """
        try:
            rows = self.conn.execute(sql, (query, limit)).fetchall()
        except sqlite3.OperationalError:
            # Not valid FTS5 syntax (an apostrophe, a stray quote): search the words as given.
            words = re.findall(r"\w[\w'-]*", query)
            if not words:
                raise InputError(f"search query '{query}' has no words to look for") from None
            plain = " ".join('"' + w.replace('"', '""') + '"' for w in words)
            rows = self.conn.execute(sql, (plain, limit)).fetchall()
        return [Hit(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]
