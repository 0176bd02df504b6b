"""``delib archive copy SRC DST``: runs and sweeps from one store to another, either way
between a folder archive and a PostgreSQL database.

A run is copied whole: its manifest, every record in order, and (for a run that can still be
resumed) its LangGraph checkpoints, re-put through the destination's own saver, so the copy
resumes where the original would have. A run already in the destination is left as it is;
a run that is running is skipped with a warning (copy it once it has stopped). Sweeps go with
their saved definition and ledger, so ``sweep status`` and ``sweep report`` read the same.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

from delib.archive.folder_store import FolderStore
from delib.archive.run_folder import CHECKPOINT_FILE
from delib.errors import DelibError


@dataclass
class Copied:
    runs: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)  # already in the destination
    skipped: list[str] = field(default_factory=list)  # one line each: why
    sweeps: list[str] = field(default_factory=list)
    checkpointed: int = 0  # runs whose checkpoints came along


@contextmanager
def saver(store: Any, run_id: str, create: bool) -> Iterator[Any]:
    """A synchronous LangGraph saver over the run's checkpoints in ``store`` (None if the run
    has none and ``create`` is false)."""
    if isinstance(store, FolderStore):
        path = store.folder(run_id) / CHECKPOINT_FILE
        if not path.exists() and not create:
            yield None
            return
        conn = sqlite3.connect(str(path), check_same_thread=False)
        try:
            yield SqliteSaver(conn)
        finally:
            conn.close()
        return
    from langgraph.checkpoint.postgres import PostgresSaver

    if not create and not store.has_checkpoints(run_id):
        yield None
        return
    yield PostgresSaver(store.conn)


def copy_checkpoints(source: Any, target: Any, run_id: str) -> int:
    """Every checkpoint of the run, oldest first, with its pending writes; how many."""
    config = {"configurable": {"thread_id": run_id}}
    items = list(source.list(config))
    for item in reversed(items):
        parent = item.parent_config or {"configurable": {"thread_id": run_id, "checkpoint_ns": ""}}
        checkpoint = item.checkpoint
        put = target.put(
            parent, checkpoint, item.metadata, dict(checkpoint.get("channel_versions") or {})
        )
        by_task: dict[str, list[tuple[str, Any]]] = {}
        for task_id, channel, value in item.pending_writes or []:
            by_task.setdefault(task_id, []).append((channel, value))
        for task_id, writes in by_task.items():
            target.put_writes(put, writes, task_id)
    return len(items)


def copy_archive(
    source: Any,
    target: Any,
    only: list[str] | None = None,
    on_run: Callable[[str], None] | None = None,
) -> Copied:
    """Copy runs (all, or ``only`` these ids or prefixes) and every sweep."""
    done = Copied()
    wanted = [source.find(w) for w in only] if only else source.run_ids()
    present = set(target.run_ids()) if target.exists() else set()
    if isinstance(target, FolderStore):
        target.path.mkdir(parents=True, exist_ok=True)
    for run_id in wanted:
        if run_id in present:
            done.present.append(run_id)
            continue
        if source.running(run_id):
            done.skipped.append(f"{run_id}: running; copy it once it has stopped")
            continue
        try:
            manifest, records = source.manifest(run_id), source.records(run_id)
        except DelibError as exc:
            done.skipped.append(str(exc))
            continue
        target.import_run({**manifest, "run_id": run_id}, records)
        with saver(source, run_id, create=False) as src:
            if src is not None:
                with saver(target, run_id, create=True) as dst:
                    if copy_checkpoints(src, dst, run_id):
                        done.checkpointed += 1
        done.runs.append(run_id)
        if on_run:
            on_run(run_id)
    if not only:
        for name in source.sweep_names():
            record = source.sweep_record(name)
            if record is None:
                continue
            target.save_sweep(name, record)
            have = {_entry_key(e) for e in target.ledger(name)}
            for entry in source.ledger(name):
                if _entry_key(entry) not in have:
                    target.note(name, entry)
            done.sweeps.append(name)
    return done


def _entry_key(entry: dict) -> tuple:
    return (entry.get("at"), entry.get("cell"), entry.get("outcome"), entry.get("run_id"))
