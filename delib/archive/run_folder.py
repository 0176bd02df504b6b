"""Run folders: ``<archive>/<run-id>/`` with turns.jsonl, manifest.json and transcript.md.

``turns.jsonl`` is appended and flushed as each turn or event happens, so a run that dies keeps
everything it finished; a background thread then fsyncs each line. ``manifest.json`` is
written when the run starts and rewritten atomically when it ends. The folders are the source
of truth; the SQLite index beside them (``delib.archive.index``) can always be rebuilt from them.

Also in a run folder:

- ``checkpoints.sqlite``: LangGraph's checkpoints of the debate graph, for ``delib resume``;
- ``inflight/<index>.partial``: a turn being spoken (a JSON header line, then the text streamed
  so far); removed when the turn is finished, so one left behind marks a turn cut off mid-reply;
- ``lock``: held (``flock``) by the process running the debate; the kernel drops it if that
  process dies, even by ``kill -9``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import shutil
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from delib.errors import InputError

DEFAULT_ARCHIVE = "transcripts"
ARCHIVE_ENV = "DELIB_TRANSCRIPTS"
TURNS_FILE = "turns.jsonl"
MANIFEST_FILE = "manifest.json"
TRANSCRIPT_FILE = "transcript.md"
CHECKPOINT_FILE = "checkpoints.sqlite"
INFLIGHT_DIR = "inflight"
LOCK_FILE = "lock"
# Whether every record is fsynced after it is appended. A flushed line already survives the
# process being killed (kill -9 included); fsync adds survival of a machine crash or power cut.
# The fsync runs on one background thread so the debate does not wait for the disk (about half
# a millisecond a turn here); closing the file waits for it. Runs fsync at their end either way.
FSYNC_EACH_RECORD = True
# Inside an event loop the fsync starts this long after the append, and a finished turn's
# in-flight file is removed this long after the turn is written: waking the fsync thread costs
# about 0.15 ms and removing a file about 0.05 ms, which would otherwise fall between a turn
# and the request for the next one. One fsync covers every line appended before it starts. A
# run killed in between leaves the in-flight file of a turn that is in turns.jsonl: resume
# drops it (``resume.apply``).
AFTER_DELAY = 0.01
# A turn being streamed is flushed to its in-flight file at most this often: replies that come
# in a burst cost one write, not one per chunk; a slow stream is still flushed chunk by chunk.
INFLIGHT_FLUSH_EVERY = 0.02


def _signals_to_the_main_thread() -> None:
    """The fsync thread never takes Ctrl-C or SIGTERM: the kernel may hand a process's signal
    to any thread that does not block it, and only the main thread acts on one."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


_SYNCER = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="delib-fsync", initializer=_signals_to_the_main_thread
)
# Runs that ended on their own; only the others (killed, interrupted, failed) can be resumed.
FINISHED = ("completed", "max_rounds", "token_budget", "deadlock", "closure", "empty_replies")


def new_run_id(scenario_id: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{scenario_id}-{secrets.token_hex(2)}"


class RunFolder:
    """One run's folder, open for appending."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_id = path.name
        self._turns = None
        self._fsync: Future | None = None  # the latest background fsync of turns.jsonl
        self._later: asyncio.TimerHandle | None = None  # ``_after`` due (AFTER_DELAY)
        self._fsync_due = False
        self._finished: list[int] = []  # finished turns whose in-flight files are still there
        self._flushed: dict[int, float] = {}  # in-flight file -> when it was last flushed
        self._lock = None
        self._inflight: dict[int, object] = {}
        self._inflight_dir: Path | None = None  # made on the first turn, once

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

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    def lock(self) -> None:
        """Hold the run's lock while it runs; another process holding it is an error."""
        handle = open(self.path / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            handle.close()
            raise InputError(
                f"run {self.run_id} is running in another process (pid {pid}); "
                "wait for it or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def repair(self) -> int:
        """Cut a truncated last line off turns.jsonl (a crash mid-write); returns bytes cut."""
        path = self.path / TURNS_FILE
        if not path.exists():
            return 0
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        return len(data) - keep

    def rewrite(self, records: list[dict]) -> None:
        """Replace turns.jsonl atomically (resume keeps only what the checkpoint agrees with)."""
        self.close_turns()
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        _atomic_write(self.path / TURNS_FILE, text)

    # --- turns being spoken ----------------------------------------------------------------
    def inflight_start(self, index: int, header: dict) -> None:
        if self._finished:
            self._drop_finished()
        if self._inflight_dir is None:
            self._inflight_dir = self.path / INFLIGHT_DIR
            self._inflight_dir.mkdir(exist_ok=True)
        handle = open(self._inflight_dir / f"{index}.partial", "w", encoding="utf-8")  # noqa: SIM115
        handle.write(json.dumps({"index": index, **header}, ensure_ascii=False) + "\n")
        handle.flush()
        old = self._inflight.pop(index, None)
        if old is not None:
            old.close()
        self._inflight[index] = handle
        self._flushed[index] = time.monotonic()

    def inflight_text(self, index: int, text: str) -> None:
        handle = self._inflight.get(index)
        if handle is not None:
            handle.write(text)
            moment = time.monotonic()
            if moment - self._flushed.get(index, 0.0) >= INFLIGHT_FLUSH_EVERY:
                handle.flush()
                self._flushed[index] = moment

    def inflight_done(self, index: int) -> None:
        self._flushed.pop(index, None)
        handle = self._inflight.pop(index, None)
        if handle is not None:
            handle.close()
        self._finished.append(index)
        self._soon()

    def _drop_finished(self) -> None:
        for index in self._finished:
            (self.path / INFLIGHT_DIR / f"{index}.partial").unlink(missing_ok=True)
        self._finished.clear()

    def take_inflight(self) -> list[dict]:
        """Turns a dead process left half spoken: header fields plus ``partial_chars``;
        the files are removed."""
        folder = self.path / INFLIGHT_DIR
        found = []
        for path in sorted(folder.glob("*.partial")) if folder.exists() else []:
            header, _, text = path.read_text(encoding="utf-8", errors="replace").partition("\n")
            try:
                entry = json.loads(header)
            except json.JSONDecodeError:
                entry = {"index": int(path.stem) if path.stem.isdigit() else -1}
            entry["partial_chars"] = len(text)
            found.append(entry)
        shutil.rmtree(folder, ignore_errors=True)
        self._inflight_dir = None
        return sorted(found, key=lambda e: e.get("index", -1))

    def append(self, record: dict) -> None:
        """Add one turn or event line. It is with the operating system when this returns, so
        killing the process loses nothing; with ``FSYNC_EACH_RECORD`` it is on the disk moments
        later."""
        if self._turns is None:
            self._turns = open(self.path / TURNS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self._turns.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._turns.flush()
        if FSYNC_EACH_RECORD:
            self._fsync_due = True
            self._soon()

    def _soon(self) -> None:
        """Have ``_after`` run AFTER_DELAY from now inside an event loop, else now."""
        if self._later is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._after()
        else:
            self._later = loop.call_later(AFTER_DELAY, self._after)

    def _after(self) -> None:
        """Remove finished turns' in-flight files and start the fsync that is due."""
        self._later = None
        self._drop_finished()
        if self._fsync_due and self._turns is not None:
            self._fsync = _SYNCER.submit(os.fsync, self._turns.fileno())
        self._fsync_due = False

    def add_turn(self, record: dict) -> None:
        """A finished turn, and the end of its in-flight file."""
        self.append(record)
        self.inflight_done(record["index"])

    def _settle(self) -> None:
        """Do now what was due later, and wait for the fsync (the file must stay open until it
        has run)."""
        if self._later is not None:
            self._later.cancel()
            self._after()
        if self._fsync is not None:
            self._fsync.result()
            self._fsync = None

    def sync(self) -> None:
        """Put what was appended on the disk (end of a run)."""
        self._settle()
        if self._turns is not None:
            self._turns.flush()
            os.fsync(self._turns.fileno())

    def write_manifest(self, manifest: dict) -> None:
        _atomic_write(self.path / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False))

    def write_transcript(self, text: str) -> None:
        _atomic_write(self.path / TRANSCRIPT_FILE, text)

    def close_turns(self) -> None:
        self._settle()
        if self._turns is not None:
            self._turns.close()
            self._turns = None

    def drop_checkpoints(self) -> None:
        """A finished run cannot be resumed: its checkpoints are only weight."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.checkpoint_path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        self.close_turns()
        for handle in self._inflight.values():
            handle.close()
        self._inflight.clear()
        folder = self.path / INFLIGHT_DIR
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
        self._inflight_dir = None
        if self._lock is not None:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            self._lock.close()  # releases the flock
            self._lock = None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:  # a full disk, say: the file as it was stays, the half-written copy goes
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
