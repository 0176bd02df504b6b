"""The run's log: ``turns.jsonl``, in-flight files, the index row and the manifest.

A run in a PostgreSQL archive (``pgrun.PgRun``) takes the folder's place: the same calls
commit rows instead of appending lines, and its checkpoints are LangGraph's PostgreSQL tables.

``Recorder`` is the ``RunLog`` the graph's nodes write to. A finished turn or event is appended
to ``turns.jsonl`` and flushed to the operating system before ``add`` returns, so ``kill -9``
loses nothing finished (it is fsynced too, per ``archive.FSYNC_EACH_RECORD``). While a turn
is being spoken, ``inflight/<index>.partial`` holds what has streamed so far (flushed at most
every ``archive.INFLIGHT_FLUSH_EVERY``, 20 ms, so a burst of chunks is one write).

The index (``index.sqlite``) gets the run's row when it starts, its turns so far while the
verdict is being written (``catch_up``) and the rest when it ends; readers catch up with
turns written in between from the folder itself (``Index.sync``), so no turn
waits on SQLite.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.sqlite import SqliteSaver

from delib.archive.index import Index
from delib.archive.markdown import markdown
from delib.archive.run_folder import FINISHED, RunFolder
from delib.debate.state import MemoryLog
from delib.errors import DelibError, DiskFull, StoreError, disk_full
from delib.records import Manifest, Record, loop_summary, now, token_totals, turns_of

Notify = Callable[[str], None]


# The channels LangGraph keeps an interrupt and its resume value in (its checkpoint format).
PAUSE_CHANNELS = frozenset({"__interrupt__", "__resume__"})


class RunSaver(SqliteSaver):
    """LangGraph's SQLite checkpointer for one run folder, called from the event loop.

    The async methods call the synchronous ones in place instead of hopping to a thread for
    every statement (``AsyncSqliteSaver``): a checkpoint here is a small row (the state holds
    counters), and with ``synchronous=NORMAL`` in WAL mode a commit reaches the operating
    system without an fsync, like a ``turns.jsonl`` line, so a write takes tens of
    microseconds. A killed process loses nothing; the tables are LangGraph's own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._step: str | None = None  # the step whose writes are held (its checkpoint's id)
        self._held: list[tuple] = []
        self._paused = False  # that step paused at a human seat: its writes are kept

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.get_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in self.list(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Keeps no pending writes (a row and a commit a step, about 0.2 ms): a step that a
        killed run did not finish is run again from the checkpoint before it, and the turns it
        had finished come back from ``turns.jsonl`` without a model call
        (``DebateContext.recovered``), so nothing is lost or asked twice. The one exception is
        a pause at a human seat (``interrupt()``, and the reply it is resumed with): LangGraph
        finds both among the pending writes, so a step that pauses keeps all of its writes,
        those of the speakers that finished beside the seat too (a simultaneous round), which
        the resumed step would otherwise speak again. Until a step pauses, its writes are
        held in memory (the latest step's only)."""
        step = config.get("configurable", {}).get("checkpoint_id")
        if step != self._step:
            self._step, self._held, self._paused = step, [], False
        if not self._paused and not any(channel in PAUSE_CHANNELS for channel, _ in writes):
            self._held.append((config, writes, task_id, task_path))
            return
        self._paused = True
        for held in self._held:
            self.put_writes(*held)
        self._held.clear()
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)


@asynccontextmanager
async def checkpoints(run: Any) -> AsyncIterator[Any]:
    """The run's checkpointer, open for the graph: ``checkpoints.sqlite`` in a run folder, or
    LangGraph's PostgreSQL saver for a run in a database (``PgRun.checkpointer``)."""
    if not isinstance(run, RunFolder):
        async with run.checkpointer() as saver:
            yield saver
        return
    conn = sqlite3.connect(str(run.checkpoint_path), check_same_thread=False)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")  # first: the switch to WAL then syncs less
        conn.execute("PRAGMA journal_mode=WAL")
        yield RunSaver(conn)
    finally:
        conn.close()


def ended_on_its_own(saver: Any) -> None:
    """The run ended on its own, so ``Recorder.finish`` will drop its checkpoints: closing
    ``checkpoints.sqlite`` (which copies the WAL into the file) need not wait for the disk,
    about 3 ms a run here."""
    if isinstance(saver, RunSaver):
        with saver.lock:
            saver.conn.execute("PRAGMA synchronous=OFF")


class Recorder(MemoryLog):
    """Writes a run's records as they happen, and its manifest at the start and the end."""

    def __init__(
        self,
        folder: Any,
        archive: Path | None,
        manifest: Manifest,
        records: list[Record] | None = None,
        notify: Notify | None = None,
    ) -> None:
        """``folder``: a ``RunFolder`` or a ``pgstore.PgRun``; ``archive``: the folder archive
        whose SQLite index to keep up to date (None for a database, which searches itself)."""
        super().__init__(records)
        self.folder = folder
        self.manifest = manifest
        self.notify = notify or (lambda text: None)
        self.archive = archive
        self.index: Index | None = None  # opened by index_start
        self._indexed: int | None = None  # records in the index, once they have been written

    # --- RunLog --------------------------------------------------------------------------------
    def begin(self, index: int, speaker: str, kind: str) -> None:
        header = {"speaker": speaker, "kind": kind, "started_at": now()}
        self.folder.inflight_start(index, header)

    def token(self, index: int, text: str) -> None:
        self.folder.inflight_text(index, text)

    def add(self, record: Record) -> None:
        if record["type"] == "turn":
            self.folder.add_turn(record)
        else:
            self.folder.append(record)
        super().add(record)

    # --- the manifest and the index ------------------------------------------------------------
    def _index_run(self) -> None:
        """Update the index: the run's row, and its turns not yet indexed (all of them, and
        whatever was there before dropped, the first time). A failure is a notice (reindex
        repairs it), never a lost run."""
        if self.index is None:
            return
        try:
            if self._indexed is None:
                self.index.replace_turns(self.folder.path, self.manifest, self.records)
            else:
                new = self.records[self._indexed :]
                self.index.add_turns(self.folder.path, self.manifest, self.records, new)
            self._indexed = len(self.records)
        except sqlite3.Error as exc:
            self.notify(
                f"the archive index is not updated during this run ({exc}); "
                "'delib transcripts reindex' repairs it"
            )
            self.index.close()
            self.index = None

    def catch_up(self) -> None:
        """Index the turns written so far (called while the verdict is being written, so that
        the end of the run has only the verdict to add)."""
        self._index_run()

    def start(self) -> None:
        """The manifest of a run that starts (or goes on after a resume)."""
        self.folder.write_manifest(self.manifest)

    def index_start(self) -> None:
        """Open the archive's index and write the row of a run that starts (with its turns so
        far, after a resume)."""
        if self.archive is not None and self.index is None:
            try:
                self.index = Index.open(self.archive)
            except (DelibError, sqlite3.Error) as exc:
                self.notify(f"the archive index is not updated during this run: {exc}")
        self._index_run()

    def finish(
        self,
        stop: str,
        error: str | None,
        verdict: dict | None,
        adaptations: list[dict],
    ) -> Manifest:
        """Write the final manifest and transcript.md; a finished run drops its checkpoints."""
        self.folder.sync()
        turns = len(turns_of(self.records))
        self.manifest.update(
            loop_events=loop_summary(self.records),
            ended_at=now(),
            stop_reason=stop,
            error=error,
            tokens=token_totals(self.records),
            turns=turns,
            events=len(self.records) - turns,
            verdict=verdict,
            adaptations=adaptations,
        )
        self.folder.write_manifest(self.manifest)
        self.folder.write_transcript(markdown(self.manifest, self.records))
        self._index_run()
        if stop in FINISHED:
            self.folder.drop_checkpoints()
        return self.manifest

    def close(self) -> None:
        self.folder.close()
        if self.index is not None:
            self.index.close()
            self.index = None


def disk_full_error(exc: BaseException, store: Any, run_id: str) -> DiskFull | None:
    """The archive's disk filled up: one line that names the archive, or None."""
    if not disk_full(exc):
        return None
    return DiskFull(
        f"the disk holding the archive {store.location} is full; the finished turns are kept "
        f"there: free some space, then 'delib resume {run_id}' goes on"
    )


def database_lost_error(exc: BaseException, store: Any, run_id: str) -> StoreError | None:
    """A database archive's error from LangGraph's checkpointer, as one line; else None."""
    if not type(exc).__module__.startswith("psycopg"):
        return None
    from delib.archive.pgrun import lost_error

    return lost_error(store.dsn, run_id, exc)
